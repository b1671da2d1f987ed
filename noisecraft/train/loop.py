"""The training loop (DDPM Algorithm 1): sample x_0, t and eps; regress the network output on
its target with MSE; AdamW with warm-up and gradient clipping; EMA weights; atomic checkpoints.

Runs as one process or as one of several under torchrun (train/distributed.py). Faults: a batch
whose loss or gradient is NaN/inf is skipped and counted, and the run stops after --max-bad-steps
of them in a row; SIGTERM/SIGINT finish the step, write a checkpoint and raise TrainingInterrupted;
a full disk is a one-line error that leaves the previous checkpoint in place."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from noisecraft.data import load_dataset
from noisecraft.device import check_precision, speed_up
from noisecraft.diffusion import ScheduleConfig, check_prediction, diffusion_loss, q_sample
from noisecraft.errors import NoisecraftError
from noisecraft.io import save_png
from noisecraft.models import CONFIG_FILE, DiffusionModel, ModelConfig, load_model, load_state, save_model, save_vae
from noisecraft.nets import get_preset
from noisecraft.nets.text import DEFAULT_ENCODER, MAX_TOKENS
from noisecraft.samplers import sample
from noisecraft.tasks.common import box_down
from noisecraft.train import distributed
from noisecraft.train.checkpoint import (clean_partial_writes, list_checkpoints, load_checkpoint, rng_state,
                                         save_checkpoint, set_rng_state)
from noisecraft.train.ema import EMA
from noisecraft.train.latent import encode_dataset, latent_scale, load_vae
from noisecraft.viz import make_grid

CFG_DROPOUT = 0.1  # condition dropped 10% of the time, for classifier-free guidance (Ho & Salimans 2021)
DEFAULT_GUIDANCE = 3.0  # written into a conditional model's config; a shipped model's is set by measurement
LOG_FILE = "train_log.jsonl"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class TrainOptions:
    data: str = "digits"
    out: str = "runs/digits"
    preset: str = "tiny"
    model: str = "diffusion"
    batch_size: int = 32                    # the global batch, whatever the number of processes
    grad_accum: int = 1                     # micro-batches per process per step
    lr: float = 2e-3
    warmup_steps: int = 100
    max_steps: int | None = None
    max_minutes: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int | None = None        # None: at every checkpoint; 0: never
    log_every: int = 10
    max_bad_steps: int = 5                  # NaN/inf steps in a row before the run stops
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    cond: str = "none"
    sr_factor: int = 4                      # cond "superres": train to upsample box-averaged (H/f, W/f) images
    prediction: str = "epsilon"
    schedule: str = "linear"
    min_snr_gamma: float | None = 5.0       # Hang et al. (2023); None or 0 turns it off
    resume: bool = False
    tensorboard: bool = False
    device: str = "cpu"
    precision: str = "fp32"                 # bf16: autocast mixed precision (noisecraft/device.py)
    compile: bool = False                   # torch.compile the UNet
    latent: str | None = None               # a VAE model directory: latent diffusion on its latents (train/latent.py)
    init: str | None = None                 # a model directory whose weights a fresh run starts from (fine-tuning)

    def validate(self) -> "TrainOptions":
        check_precision(self.precision)
        if self.latent is not None and self.model != "diffusion":
            raise NoisecraftError(f"--latent trains a diffusion model on a VAE's latents: drop it for --model {self.model}")
        if self.latent is not None and self.cond == "superres":
            raise NoisecraftError("--cond superres conditions on low-resolution pixels, which a latent model never "
                                  "sees: drop --latent or --cond superres")
        if self.model != "diffusion" and (self.precision != "fp32" or self.compile):
            raise NoisecraftError(f"--precision and --compile apply to diffusion models only: drop them for "
                                  f"--model {self.model}")
        if self.init is not None and self.model != "diffusion":
            raise NoisecraftError(f"--init starts a diffusion model from trained weights: drop it for --model {self.model}")
        if self.model != "diffusion":
            from noisecraft.baselines.train import check_options
            check_options(self)             # the family, its preset, and no diffusion-only option set
        if self.cond not in ("none", "class", "text", "superres"):
            raise NoisecraftError(f"unknown --cond {self.cond!r}: use none, class, text or superres")
        check_prediction(self.prediction)
        size = get_preset(self.preset).image_size if self.model == "diffusion" else None   # baselines: their own presets
        if self.cond == "superres" and (self.sr_factor < 2 or size % self.sr_factor):
            raise NoisecraftError(f"--sr-factor must be at least 2 and divide the {self.preset} preset's image size "
                                  f"{size}, got {self.sr_factor}")
        if self.schedule not in ("linear", "cosine"):
            raise NoisecraftError(f"unknown --schedule {self.schedule!r}: use linear or cosine")
        for name in ("batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise NoisecraftError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise NoisecraftError(f"--lr must be a positive number, got {self.lr}")
        if self.max_steps is None and self.max_minutes is None:
            raise NoisecraftError("say when to stop: pass --max-steps or --max-minutes")
        if (self.max_steps is not None and self.max_steps < 1) or (self.max_minutes is not None and self.max_minutes <= 0):
            raise NoisecraftError("--max-steps and --max-minutes must be positive")
        if self.seed < 0:
            raise NoisecraftError(f"--seed must be >= 0, got {self.seed}")
        return self

    # Options that must not change across a resume (the rest, like max_steps, may). The learning
    # rate is restored with the optimizer state, so a different --lr would be silently ignored.
    # grad_accum and the number of processes may change: they split the same global batch.
    FIXED = ("model", "data", "preset", "batch_size", "lr", "warmup_steps", "cond", "sr_factor", "prediction", "schedule",
             "seed", "ema_decay", "min_snr_gamma", "latent")


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run after a checkpoint was written; resume with --resume."""

    def __init__(self, signum: int, step: int, out: Path):
        self.signum, self.step, self.out = signum, step, out
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint written to {out}; "
                         "continue with --resume")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch depends only on (seed, epoch), so resuming mid-epoch is exact
    and every process computes the same order without talking to the others."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def seed_process(seed: int, rank: int) -> None:
    """Global RNGs of one process. Rank 0 keeps the plain seed, so one process trains as before;
    the others get their own streams (dropout masks differ per process, as in DiT's DDP recipe)."""
    torch.manual_seed(seed if rank == 0 else seed * 1_000_003 + rank)
    np.random.seed((seed + 7919 * rank) % 2**32)
    random.seed(seed + 7919 * rank)


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019), fused into one kernel per step where PyTorch has one (CPU and CUDA
    parameters): a `small` step took 5.5 ms against 11.2 ms for the default loop over parameters on 2 CPU
    cores. benchmarks/speed.py times noisecraft's training step with it."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer moment its parameter's memory layout (a checkpoint stores them contiguous;
    the UNet's convolution weights are channels_last). The fused AdamW pairs a parameter's elements with its
    moments' in memory order, so mismatched layouts would silently update each weight with another's moments."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for name, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    state[name] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def restore(ckpt, opts: TrainOptions, model: nn.Module, ema: EMA, optimizer, lr_scheduler, noise_gen: torch.Generator,
            rank: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """Load a checkpoint's state into a run's objects, refusing options that must not change, and return the
    progress (step, epoch, pos, skipped, bad_in_row). The RNG state is this process's (`rank`)."""
    changed = [k for k in TrainOptions.FIXED if ckpt.meta["options"].get(k) != asdict(opts)[k]]
    if changed:
        raise NoisecraftError(f"--resume with different {', '.join(changed)} than the checkpoint: use the original values")
    load_state(model, ckpt.tensors["model"], ckpt.path)
    ema.load_state_dict(ckpt.tensors["ema"])
    optimizer.load_state_dict(ckpt.meta["optimizer_state"])
    match_layouts(optimizer)
    lr_scheduler.load_state_dict(ckpt.meta["lr_scheduler"])
    rng = ckpt.tensors["rng"]
    noise_gen.set_state(rng["noise"])
    mine = {k.split(".", 1)[1]: v for k, v in rng.items() if k.startswith(f"rank{rank}.")}
    if not mine and rank == 0 and "torch" in rng:                   # a checkpoint from before per-process states
        mine = {"torch": rng["torch"]}
    if mine:
        set_rng_state(mine, device)
    progress = ckpt.meta["progress"]
    return (progress["step"], progress["epoch"], progress["pos"], progress.get("skipped", 0),
            progress.get("bad_in_row", 0))


def tensorboard_writer_class():
    """TensorBoard's SummaryWriter, checked before the run starts so a missing package costs nothing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NoisecraftError("--tensorboard needs the tensorboard package: pip install tensorboard, or drop "
                              f"--tensorboard ({LOG_FILE} holds the same numbers; see noisecraft plot-log)") from None
    return SummaryWriter


@contextlib.contextmanager
def stop_signals():
    """While training: the first SIGTERM/SIGINT is noted (the loop checkpoints and stops at the end of
    the step); a second SIGINT interrupts at once. Yields a list holding the signal numbers seen."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():   # handlers can only be set there
        yield seen
        return

    def note(signum, frame):
        if seen and signum == signal.SIGINT:
            raise KeyboardInterrupt
        seen.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield seen
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(opts: TrainOptions, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Train and return the model directory (`opts.out`). Stops at max_steps or max_minutes,
    whichever comes first; writes the model and a checkpoint every `checkpoint_every` steps.
    Under torchrun each process calls this; only rank 0 logs and writes files."""
    opts.validate()
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise NoisecraftError(f"--out {out} is a file: choose a directory")
    if not opts.resume and ((out / CONFIG_FILE).exists() or list_checkpoints(out)):
        raise NoisecraftError(f"{out} already holds a model: pass --resume to continue it, or choose another --out")
    if opts.model != "diffusion":
        from noisecraft.baselines.train import train_baseline
        return train_baseline(opts, out, log, progress)
    ctx = distributed.init(opts.device)
    try:
        if opts.batch_size < ctx.world_size * opts.grad_accum:
            raise NoisecraftError(f"--batch-size {opts.batch_size} is smaller than processes x --grad-accum "
                                  f"({ctx.world_size} x {opts.grad_accum}): every micro-batch needs an image")
        with stop_signals() as signals:
            return _train(opts, out, ctx, log if ctx.is_main else (lambda msg: None), progress and ctx.is_main,
                          signals)
    finally:
        distributed.shutdown(ctx)


def build_config(opts: TrainOptions, data, device: torch.device, vae: nn.Module | None = None, scale: float = 1.0):
    """The model config for this data and these options, and the caption table for --cond text. With a
    `vae` (latent diffusion), `data.images` are its latents times `scale`, and the UNet preset keeps its
    widths but takes the latents' channels and size."""
    unet = get_preset(opts.preset)
    if vae is not None:
        c, h, w = data.images.shape[1:]
        if h % 2 ** (len(unet.channel_mult) - 1):
            raise NoisecraftError(f"the {opts.preset} UNet halves its input {len(unet.channel_mult) - 1} times, and the "
                                  f"VAE's latents are {c}x{h}x{w}: pick a preset with fewer levels (tiny has 3)")
        unet = replace(unet, in_channels=c, image_size=h)
    if opts.cond == "class":
        if data.labels is None:
            raise NoisecraftError(f"--cond class needs labels, and {opts.data} has none (use subfolders per class)")
        unet = replace(unet, num_classes=len(data.class_names))
    captions = None
    if opts.cond == "text":
        captions, encoder = text_table(data, opts.data)
        captions = tuple(v.to(device) for v in captions)
        unet = replace(unet, context_dim=encoder.width)
    if opts.cond == "superres":
        unet = replace(unet, low_res_channels=unet.in_channels)
    config = ModelConfig(unet=unet, schedule=ScheduleConfig(kind=opts.schedule), prediction=opts.prediction,
                         cond=opts.cond, data=opts.data,
                         class_names=data.class_names if opts.cond == "class" else None,
                         sr_factor=opts.sr_factor if opts.cond == "superres" else 0,
                         guidance=DEFAULT_GUIDANCE if opts.cond in ("class", "text") else 1.0,
                         text_encoder=DEFAULT_ENCODER if opts.cond == "text" else None, max_tokens=MAX_TOKENS,
                         vae=vae.config if vae is not None else None, latent_scale=scale,
                         description=f"{opts.preset} UNet trained on {opts.data}"
                                     + (f" in the latent space of the VAE from {opts.latent}" if vae is not None else ""))
    return config, captions


def init_weights(model: nn.Module, config: ModelConfig, source: str) -> None:
    """Start from the weights of the model directory `source`, which must be the network this run builds
    (same UNet, conditioning, prediction and schedule)."""
    init = load_model(source)
    if not isinstance(init, DiffusionModel):
        raise NoisecraftError(f"--init {source} is not a noisecraft diffusion model directory")
    changed = [name for name in ("unet", "cond", "prediction", "schedule", "vae")
               if getattr(init.config, name) != getattr(config, name)]
    if changed:
        raise NoisecraftError(f"--init {source} is not the network this run trains (its {', '.join(changed)} "
                              "differ): use the --preset, --cond, --prediction and --schedule it was trained with")
    model.net.load_state_dict(init.net.state_dict())


def _train(opts: TrainOptions, out: Path, ctx: distributed.Dist, log: Callable[[str], None], progress: bool,
           signals: list[int]) -> Path:
    from tqdm import tqdm

    device = ctx.device
    preset = get_preset(opts.preset)
    vae = load_vae(opts.latent, device) if opts.latent is not None else None
    pixels = vae.config if vae is not None else preset          # the images' size and channels
    data = load_dataset(opts.data, image_size=pixels.image_size, channels=pixels.in_channels, lazy=True)
    n = len(data.images)
    if n == 0:
        raise NoisecraftError(f"data source {opts.data!r} has no images")
    if opts.batch_size > n:
        raise NoisecraftError(f"--batch-size {opts.batch_size} is larger than the {n} images of {opts.data}: lower it")
    scale = 1.0
    if vae is not None:                              # latent diffusion: the data are the VAE's scaled latents
        latents = encode_dataset(vae, data.images)
        if not isinstance(data.images, torch.Tensor):
            data.images.close()
        scale = latent_scale(latents)
        data = replace(data, images=latents * scale)                # (N, c, h, w)
    config, captions = build_config(opts, data, device, vae, scale)
    writer_class = tensorboard_writer_class() if opts.tensorboard else None

    seed_process(opts.seed, 0)                       # every process builds the same initial weights
    model = DiffusionModel(config).to(device)
    if vae is not None:
        model.vae.load_state_dict(vae.state_dict())
    if opts.init is not None and not opts.resume:       # on --resume the checkpoint's weights win
        init_weights(model, config, opts.init)
    if ctx.rank:
        seed_process(opts.seed, ctx.rank)
    ema = EMA(model.net, opts.ema_decay)
    optimizer = adamw(model.net.parameters(), opts.lr, opts.weight_decay)          # not the VAE
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opts.warmup_steps))
    speed_up(model, opts.precision, opts.compile)
    noise_gen = torch.Generator().manual_seed(opts.seed + 1)    # shared: the same draws in every process
    step, epoch, pos, skipped, bad_in_row, saved_step = 0, 0, 0, 0, 0, None

    if ctx.is_main:
        clean_partial_writes(out)
    if opts.resume:
        ckpt = load_checkpoint(out)
        step, epoch, pos, skipped, bad_in_row = restore(ckpt, opts, model.net, ema, optimizer, lr_scheduler, noise_gen,
                                                        ctx.rank, device)
        rng = ckpt.tensors["rng"]
        saved_step = step
        distributed.barrier(ctx)                     # every process has read the files before any is moved
        for path, why in ckpt.corrupt:
            log(f"warning: checkpoint {path.name} is corrupt ({why}); resumed from the older {ckpt.path.name}")
            if ctx.is_main:
                path.replace(path.with_name(path.name + ".corrupt"))
        saved_ranks = sum(1 for k in rng if k.endswith(".torch") and k.startswith("rank"))
        if ctx.world_size > saved_ranks:
            log(f"note: the checkpoint holds RNG states for {saved_ranks} process(es); the others start fresh streams")
        log(f"resuming {out} at step {step}" + (f" ({ctx.world_size} processes)" if ctx.world_size > 1 else ""))

    images = data.images.to(device) if isinstance(data.images, torch.Tensor) else data.images
    labels = data.labels.to(device) if data.labels is not None else None
    alpha_bar = model.schedule.alphas_cumprod.to(device=device, dtype=torch.float32)
    T, B, W = model.schedule.num_timesteps, opts.batch_size, ctx.world_size
    shape = (B, *config.unet_shape)
    order = epoch_order(n, opts.seed, epoch)
    net = model
    if W > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    micro = distributed.micro_slices(distributed.rank_slice(B, W, ctx.rank), opts.grad_accum)

    def fetch(rows: torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images[rows.to(device)]
        return images[rows].to(device)              # lazy shards: decode only this process's rows

    def checkpoint() -> None:
        """All processes call this (the RNG states are gathered); rank 0 writes. A full disk stops
        every process with the newest complete checkpoint still on disk."""
        nonlocal saved_step
        states = distributed.gather(ctx, rng_state(device))
        failure = None
        if ctx.is_main:
            rng = {"noise": noise_gen.get_state()} | {f"rank{r}.{k}": v for r, s in enumerate(states) for k, v in s.items()}
            written = None
            try:
                save_checkpoint(out, model=model.net, ema=ema, optimizer=optimizer, lr_scheduler=lr_scheduler, rng=rng,
                                progress={"step": step, "epoch": epoch, "pos": pos, "skipped": skipped,
                                          "bad_in_row": bad_in_row},
                                options=asdict(opts), keep=opts.keep_checkpoints)
                written = step
                save_model(out, config, ema.state_dict())
                every = opts.checkpoint_every if opts.sample_every is None else opts.sample_every
                if every and step % every == 0:
                    examples = fetch(torch.arange(min(64, n)))
                    write_sample_grid(out / "samples" / f"step-{step:07d}.png", config, ema, device, examples, model.vae)
            except OSError as e:
                if e.errno not in DISK_FULL:
                    raise
                newest = written if written is not None else saved_step
                kept = f"the checkpoint of step {newest} is intact" if newest is not None else "no checkpoint was written"
                failure = NoisecraftError(f"disk full ({e.strerror}) while writing the step-{step} checkpoint in {out}; "
                                          f"{kept}: free space, then run again with --resume")
        if distributed.all_sum(ctx, torch.tensor([float(failure is not None)]))[0] > 0:
            raise failure or NoisecraftError(f"rank 0 could not write the step-{step} checkpoint (see its error)")
        saved_step = step

    start = time.monotonic()
    bar = tqdm(total=opts.max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    interval = new_interval(time.monotonic())
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if vae is not None:
            save_vae(out, vae)                       # before any config.json points at it
    log_file = open_log(out / LOG_FILE) if ctx.is_main else None
    writer = writer_class(str(out / "tensorboard")) if writer_class and ctx.is_main else None
    model.train()
    try:
        while opts.max_steps is None or step < opts.max_steps:
            if pos + B > n:                                             # drop the ragged tail, start a new epoch
                epoch, pos = epoch + 1, 0
                order = epoch_order(n, opts.seed, epoch)
            idx = order[pos:pos + B]                                    # (B,) the global batch
            pos += B
            # Drawn for the whole global batch in every process, then sliced: a sample's t and noise
            # do not depend on the number of processes or micro-batches.
            t = torch.randint(0, T, (B,), generator=noise_gen)
            noise = torch.randn(shape, generator=noise_gen)              # (B, C, H, W)
            drop = torch.rand(B, generator=noise_gen) < CFG_DROPOUT if opts.cond in ("class", "text") else None

            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for j, part in enumerate(micro):
                # DDP all-reduces gradients on the last micro-batch only; the earlier ones accumulate.
                sync = j == len(micro) - 1 or W == 1
                with contextlib.nullcontext() if sync else net.no_sync():
                    rows = idx[part]
                    x0 = fetch(rows)
                    tt, eps = t[part].to(device), noise[part].to(device)
                    x_t = q_sample(model.schedule, x0, tt, eps)            # DDPM eq. 4
                    cond = {}
                    if opts.cond == "class":
                        y = labels[rows.to(device)]
                        cond["class_labels"] = torch.where(drop[part].to(device), torch.full_like(y, config.unet.num_classes), y)
                    if opts.cond == "text":
                        states, masks, caption_index = captions
                        c = torch.where(drop[part].to(device), 0, caption_index[rows.to(device)])  # row 0: the empty prompt
                        cond["context"], cond["context_mask"] = states[c], masks[c]
                    if opts.cond == "superres":
                        cond["low_res"] = box_down(x0, opts.sr_factor)     # SR3: learn p(x_0 | y), y = A x_0
                    loss = diffusion_loss(net(x_t, tt.float(), **cond), x0, eps, alpha_bar[tt], opts.prediction,
                                          opts.min_snr_gamma or None)
                    # A mean over the global batch: DDP averages over W processes, hence the factor W.
                    (loss * (len(rows) * W / B)).backward()
                loss_sum += loss.detach().double().cpu() * len(rows)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.net.parameters(), opts.grad_clip)
            time_up = ctx.is_main and opts.max_minutes is not None and time.monotonic() - start >= 60 * opts.max_minutes
            total, stop_signal, stop_time = distributed.all_sum(
                ctx, torch.stack([loss_sum, torch.tensor(float(max(signals, default=0)), dtype=torch.float64),
                                  torch.tensor(float(time_up), dtype=torch.float64)])).tolist()
            batch_loss = total / B
            interval["batches"] += 1
            if math.isfinite(batch_loss) and bool(torch.isfinite(grad_norm)):
                optimizer.step()
                lr_scheduler.step()
                step += 1
                ema.update(model.net, step)
                bad_in_row = 0
                interval["losses"].append(batch_loss)
                bar.update(1)
                if step % opts.log_every == 0 and ctx.is_main:
                    interval = write_log(log_file, writer, interval, step=step, batch=B, lr=lr_scheduler.get_last_lr()[0],
                                         minutes=(time.monotonic() - start) / 60, epoch=epoch, skipped_total=skipped,
                                         processes=W)
                    bar.set_postfix(loss=f"{interval['last']['loss']:.4f}", img_s=f"{interval['last']['img_s']:.0f}")
                if step % opts.checkpoint_every == 0:
                    checkpoint()
            else:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                bad_in_row += 1
                interval["skipped"] += 1
                what = f"loss {batch_loss}" if not math.isfinite(batch_loss) else f"gradient norm {float(grad_norm)}"
                log(f"warning: {what} after step {step}: batch skipped ({bad_in_row} in a row, {skipped} in all)")
                if bad_in_row >= opts.max_bad_steps:
                    kept = (f"the last good checkpoint (step {saved_step}) is kept in {out}" if saved_step is not None
                            else "no checkpoint was written")
                    raise NoisecraftError(f"{what} for {bad_in_row} batches in a row after step {step}; {kept}: "
                                          "lower --lr or check the data")
            if stop_signal:
                if saved_step != step:
                    checkpoint()
                raise TrainingInterrupted(signals[0] if signals else signal.SIGTERM, step, out)
            if stop_time:
                break
        if saved_step != step:
            checkpoint()
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
        if not isinstance(images, torch.Tensor):
            images.close()
    return out


def open_log(path: Path):
    """train_log.jsonl for appending; a last line cut short by a kill is dropped first, so the
    resumed run's records start on a line of their own."""
    if path.is_file():
        with path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return path.open("a")


def new_interval(t0: float) -> dict:
    return {"batches": 0, "skipped": 0, "losses": [], "t0": t0}


def write_log(log_file, writer, interval: dict, *, step: int, batch: int, **extra) -> dict:
    """One train_log.jsonl record for the steps since the last one (mean loss, images and optimizer
    steps per second, skipped batches), mirrored to TensorBoard; returns the next interval."""
    now = time.monotonic()
    elapsed = max(now - interval["t0"], 1e-9)
    losses = interval["losses"]
    record = {"step": step, "loss": sum(losses) / len(losses), "img_s": interval["batches"] * batch / elapsed,
              "steps_s": len(losses) / elapsed, "skipped": interval["skipped"]} | extra
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    if writer is not None:
        for key in ("loss", "img_s", "steps_s", "lr", "skipped"):
            writer.add_scalar(f"train/{key}", record[key], step)
    return new_interval(now) | {"last": record}


def text_table(data, source: str):
    """Every distinct caption encoded once by the frozen text encoder: (states (U, L, D), masks (U, L),
    caption index per image), with row 0 the empty prompt that condition dropout swaps in."""
    from noisecraft.nets.text import TextEncoder

    if getattr(data, "captions", None) is None:
        raise NoisecraftError(f"--cond text needs captions, and {source} has none: use shapes, emoji, or a folder "
                              "with metadata.jsonl")
    unique = list(dict.fromkeys(["", *data.captions]))
    row = {c: i for i, c in enumerate(unique)}
    encoder = TextEncoder(DEFAULT_ENCODER, MAX_TOKENS)
    states, masks, _ = encoder.encode(unique)
    return (states, masks, torch.tensor([row[c] for c in data.captions])), encoder


def write_sample_grid(path: Path, config: ModelConfig, ema: EMA, device, examples: torch.Tensor, vae: nn.Module | None,
                      n: int = 64) -> None:
    """A grid from the EMA weights with 50 DDIM steps, fixed seed, so grids across steps compare. A
    super-resolution model upsamples the first `examples` (training images) box-averaged; a latent
    model's samples are decoded by its `vae`."""
    model = DiffusionModel(config).to(device)
    model.net.load_state_dict(ema.state_dict())
    if vae is not None:
        model.vae.load_state_dict(vae.state_dict())
    model.eval()
    cond = {}
    if config.unet.num_classes:
        cond["class_labels"] = torch.arange(n, device=device) % config.unet.num_classes
    if config.sr_factor:
        n = min(n, len(examples))
        cond["low_res"] = box_down(examples[:n], config.sr_factor)
    x = sample(model, (n, *config.image_shape), sampler="ddim", steps=50,
               generator=torch.Generator().manual_seed(0), cond=cond)
    save_png(path, make_grid(x, nrow=8), {"step": path.stem})
