"""Where and how a model runs: --device auto|cpu|cuda[:N] -> torch.device, and the speed options
--precision fp32|bf16 and --compile (measured in benchmarks/speed.py, docs/benchmarks.md)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from noisecraft.errors import NoisecraftError

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


def speed_up(model: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """Set how a diffusion model (a DiffusionModel, or a diffusers folder's DiffusersUNet) runs, in place: its
    precision (the output stays fp32) and, with `compile`, torch.compile of its forward (fused kernels after
    a slow first call per input shape; the weights and state_dict keys are unchanged, so checkpoints and EMA
    do not notice). Shapes are static: inductor's dynamic-shape lowering of convolutions fails here once a
    second shape is seen."""
    model.precision = check_precision(precision)
    if compile:
        model.compile(dynamic=False)
    return model
