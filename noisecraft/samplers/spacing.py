"""Timestep grids: which of the T training steps a sampler visits, largest first.

Grids are float64 so that continuous samplers can use fractional t later."""
from __future__ import annotations

import numpy as np
import torch

from noisecraft.errors import NoisecraftError


def leading(steps: int, T: int) -> np.ndarray:
    """DDIM paper / diffusers 'leading': 0, k, 2k, ... with k = T // steps (never visits t = T-1)."""
    return (np.arange(steps) * (T // steps)).round()[::-1]


def trailing(steps: int, T: int) -> np.ndarray:
    """Lin et al. (2024) 'trailing': starts at T-1, so the first step sees pure noise."""
    return np.round(np.arange(T, 0, -T / steps)) - 1


def linspace(steps: int, T: int) -> np.ndarray:
    """Evenly spaced from T-1 to 0 inclusive, rounded (diffusers 'linspace')."""
    return np.linspace(0, T - 1, steps).round()[::-1]


SPACINGS = {"leading": leading, "trailing": trailing, "linspace": linspace}


def timesteps(spacing: str, steps: int, T: int) -> torch.Tensor:
    """The decreasing grid for `steps` solver steps of a T-step schedule."""
    if spacing not in SPACINGS:
        raise NoisecraftError(f"unknown spacing {spacing!r}: use one of {', '.join(SPACINGS)}")
    if not 1 <= steps <= T:
        raise NoisecraftError(f"steps must be between 1 and {T} (the schedule's length), got {steps}")
    grid = SPACINGS[spacing](steps, T)
    if len(np.unique(grid)) != steps or grid.min() < 0:
        raise NoisecraftError(f"spacing {spacing!r} cannot place {steps} distinct steps in T={T}: use 'trailing'")
    return torch.tensor(grid.copy(), dtype=torch.float64)
