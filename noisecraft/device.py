"""Where and how a model runs: --device auto|cpu|cuda[:N] -> torch.device, and the speed options
--precision fp32|bf16 and --compile (measured in benchmarks/speed.py, docs/benchmarks.md)."""
from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import platform
import warnings
from pathlib import Path

import torch
from torch import nn

from noisecraft.errors import NoisecraftError
from noisecraft.nets import winograd

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NoisecraftError(f"--device {name}: no CUDA GPU is available here; use --device cpu or auto")
        return torch.device(name)
    raise NoisecraftError(f"unknown --device {name!r}: use auto, cpu or cuda")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise NoisecraftError(f"unknown --precision {precision!r}: use {' or '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str):
    """bf16: matrix products and convolutions in bfloat16 (AMX / tensor cores), weights, norms and the loss
    in fp32 (mixed precision, Micikevicius et al. 2018); fp32: nothing changes."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")   # x86 (AVX-512 BF16, AMX) and aarch64 (FEAT_BF16)


@functools.cache
def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bf16 arithmetic instructions, from /proc/cpuinfo; None where that cannot be read.
    Without them oneDNN emulates bf16 through fp32: on an AVX2 machine benchmarks/speed.py measured bf16
    convolutions at 19 GFLOP/s against 146 in fp32, and a bf16 matrix product at 0.9 against 123."""
    try:
        return bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def bf16_in_cpuinfo(text: str) -> bool:
    flags = {f for line in text.splitlines() if line.startswith(("flags", "Features")) and ":" in line
             for f in line.split(":", 1)[1].split()}
    return any(f in flags for f in BF16_CPU_FLAGS)


def warn_if_slow_bf16(model: nn.Module) -> None:
    """One warning when bf16 is asked for on a CPU that emulates it (many times slower than fp32)."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cpu" and cpu_has_bf16() is False:
        warnings.warn("noisecraft: this CPU has no bf16 instructions (AVX-512 BF16 or AMX), so bf16 is emulated "
                      "and runs several times slower than fp32 here; use --precision fp32", RuntimeWarning,
                      stacklevel=3)


def speed_up(model: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """Set how a diffusion model (a DiffusionModel, or a diffusers folder's DiffusersUNet) runs, in place: its
    precision (the output stays fp32) and, with `compile`, torch.compile of its forward (fused kernels after
    a slow first call per input shape; the weights and state_dict keys are unchanged, so checkpoints and EMA
    do not notice; the Winograd 3x3 convolutions stay in the graph as custom operators). Shapes are static:
    inductor's dynamic-shape lowering of convolutions fails here once a second shape is seen."""
    model.precision = check_precision(precision)
    if precision == "bf16":
        warn_if_slow_bf16(model)
    if compile:
        winograd.library()          # built before tracing: the traced graph calls its kernels as operators
        model.compile(dynamic=False)
    return model


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # mallopt() parameters, from glibc's <malloc.h>
MALLOPT_MAX = 2**31 - 1                           # the largest value mallopt() takes (an int): 2 GiB


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory that tensors free, for the next ones, instead of handing it back to
    the operating system. By default a block over its mmap threshold (at most 32 MiB) is mapped for each
    tensor and unmapped when the tensor dies, and a free top of the heap is trimmed; every page is then
    faulted in and zeroed again at the next step: a `small` forward took 6,000-14,000 such page faults
    per call at batch 16 and over 100,000 at batch 64 (benchmarks/allocator.py). The cost: the process
    keeps its peak heap after the peak has passed. Process-wide, so the command line calls it once at
    start; library users may call it.
    Returns False, and changes nothing, where the C library is not glibc (macOS, Windows, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MALLOPT_MAX) and libc.mallopt(M_TRIM_THRESHOLD, MALLOPT_MAX))


# The layers autocast runs in bf16, casting their fp32 weights at every call.
CAST_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def low_precision_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of `net` whose convolution and linear layers hold bf16 weights. Under bf16 autocast it
    computes exactly what `net` computes: autocast rounds those fp32 weights to bf16 at every call and leaves
    bf16 ones as they are. Norms, embeddings and everything else keep their fp32 parameters."""
    with torch.inference_mode(False), torch.no_grad():
        frozen = copy.deepcopy(net).requires_grad_(False)
        for layer in frozen.modules():
            if isinstance(layer, CAST_LAYERS):
                layer.to(torch.bfloat16)
    return frozen


def running_net(model: nn.Module, net: nn.Module) -> nn.Module:
    """The network a model's forward pass runs: the bf16 copy cast_once() made, when there is one and no
    gradient is being recorded; else `net` itself."""
    return model.cast_net if model.cast_net is not None and not torch.is_grad_enabled() else net


@contextlib.contextmanager
def cast_once(model: nn.Module, net: nn.Module):
    """For a loop of inference calls with fixed weights (one sampling run), in bf16: the weights of `net`,
    the model's network, are cast to bf16 once instead of at every call; the model's forward runs
    running_net(model, net). The outputs are bit-identical; the casts were about a fifth of a batch-1 bf16
    forward (benchmarks/speed.py). fp32 and compiled models (whose traced graph holds the network itself)
    are left alone. The copy takes half the network's fp32 size while it lives and is dropped on exit, so
    a weight changed later is always seen. Concurrent loops (server workers) share the first one's copy;
    after it is dropped they go on casting per call."""
    if model.precision != "bf16" or getattr(model, "_compiled_call_impl", None) is not None or model.cast_net is not None:
        yield
        return
    object.__setattr__(model, "cast_net", low_precision_copy(net))    # a plain attribute: not in state_dict()
    try:
        yield
    finally:
        object.__setattr__(model, "cast_net", None)
