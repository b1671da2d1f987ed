"""--device auto|cpu|cuda[:N] -> torch.device."""
from __future__ import annotations

import torch

from noisecraft.errors import NoisecraftError


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
