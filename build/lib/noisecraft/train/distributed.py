"""Data-parallel training on PyTorch's own engine: torchrun starts one process per device and sets
RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous address); each process trains a replica wrapped
in DistributedDataParallel, which averages gradients over the processes after each backward.

The global batch is fixed by the user; process r takes rows [r*B/W, (r+1)*B/W) of it, split again
into --grad-accum micro-batches. Everything random that a sample sees (data order, t, noise,
condition dropout) is drawn for the whole global batch from a generator every process shares, so a
sample's noise does not depend on how the batch is split: 1 process and W processes train the same."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from noisecraft.errors import NoisecraftError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False          # we initialized the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str) -> Dist:
    """The process's place in the job, from torchrun's environment; a single process without it.
    gloo on CPU, nccl on CUDA with one GPU per process (cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world == 1:
        return Dist(0, 1, dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise NoisecraftError(f"process {rank} needs GPU {local_rank} but this node has {torch.cuda.device_count()}: "
                                  "start at most one process per GPU (--nproc-per-node)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev, owns)


def shutdown(ctx: Dist) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def rank_slice(n: int, world: int, rank: int) -> slice:
    """Process `rank`'s rows of a global batch of n: contiguous, sizes differing by at most one."""
    return slice(rank * n // world, (rank + 1) * n // world)


def micro_slices(part: slice, accum: int) -> list[slice]:
    """A process's rows split into `accum` micro-batches (gradient accumulation)."""
    n = part.stop - part.start
    return [slice(part.start + i * n // accum, part.start + (i + 1) * n // accum) for i in range(accum)]


def all_sum(ctx: Dist, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all processes (float64 on CPU in, out); the identity for one process."""
    if ctx.world_size == 1:
        return values
    on_device = values.to(ctx.device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.cpu()


def gather(ctx: Dist, tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Every process's `tensors` (same keys and shapes everywhere), in rank order, on every process.
    Tensors travel through the collective itself, no pickling."""
    if ctx.world_size == 1:
        return [tensors]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(ctx.world_size)]
    for key, value in tensors.items():
        parts = [torch.empty_like(value, device=ctx.device) for _ in range(ctx.world_size)]
        dist.all_gather(parts, value.to(ctx.device))
        for r, part in enumerate(parts):
            out[r][key] = part.cpu()
    return out


def barrier(ctx: Dist) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """`noisecraft train --nproc N ...` as the torchrun command it stands for, on this node alone
    (--standalone: a local rendezvous on a free port). Several nodes: run torchrun yourself."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "noisecraft", "train", *train_args]
