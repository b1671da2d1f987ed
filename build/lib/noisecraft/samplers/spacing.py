"""Timestep grids: where a sampler evaluates the model, largest t first.

Grids are float64; `karras` and `logsnr` fall between integer steps, which the model protocol
allows (fractional t maps to a noise level by log-sigma interpolation)."""
from __future__ import annotations

import numpy as np
import torch

from noisecraft.diffusion import NoiseSchedule
from noisecraft.errors import NoisecraftError


def leading(steps: int, schedule: NoiseSchedule) -> np.ndarray:
    """DDIM paper / diffusers 'leading': 0, k, 2k, ... with k = T // steps (never visits t = T-1)."""
    return (np.arange(steps) * (schedule.num_timesteps // steps)).round()[::-1]


def trailing(steps: int, schedule: NoiseSchedule) -> np.ndarray:
    """Lin et al. (2024) 'trailing': starts at T-1, so the first step sees pure noise."""
    T = schedule.num_timesteps
    return np.round(np.arange(T, 0, -T / steps)) - 1


def linspace(steps: int, schedule: NoiseSchedule) -> np.ndarray:
    """Evenly spaced from T-1 to 0 inclusive, rounded (diffusers 'linspace'; one step is T-1)."""
    return np.linspace(schedule.num_timesteps - 1, 0, steps).round()


def karras(steps: int, schedule: NoiseSchedule, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    between the schedule's own sigma_max (t = T-1) and sigma_min (t = 0)."""
    s_min, s_max = float(schedule.sigmas[0]), float(schedule.sigmas[-1])
    ramp = np.linspace(0, 1, steps)
    sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return schedule.sigma_to_t(torch.from_numpy(sigmas)).numpy()


def logsnr(steps: int, schedule: NoiseSchedule) -> np.ndarray:
    """Uniform in log-SNR lambda = -2 log sigma, from t = T-1 to t = 0 (the grid DPM-Solver analyses)."""
    lam = np.linspace(float(schedule.log_snr[-1]), float(schedule.log_snr[0]), steps)
    return schedule.sigma_to_t(torch.from_numpy(np.exp(-lam / 2))).numpy()


def custom_timesteps(grid, schedule: NoiseSchedule) -> torch.Tensor:
    """A grid given as numbers (from the caller or saved with a model), checked: strictly decreasing, in [0, T-1]."""
    try:
        g = torch.as_tensor(grid, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise NoisecraftError(f"a timestep grid must be a list of numbers, got {grid!r}") from None
    T = schedule.num_timesteps
    if len(g) == 0 or not bool(torch.isfinite(g).all()) or g.min() < 0 or g.max() > T - 1 or bool((g.diff() >= 0).any()):
        raise NoisecraftError(f"a timestep grid must be strictly decreasing values in [0, {T - 1}], got {g.tolist()}")
    return g


def tuned_grid(model, sampler: str, steps: int, schedule: NoiseSchedule) -> torch.Tensor:
    """The grid tuned for (sampler, steps) and saved with the model (grids.json, see samplers/tuning.py)."""
    grids = getattr(model, "grids", None) or {}
    if str(steps) not in grids.get(sampler, {}):
        have = ", ".join(f"{s}@{k}" for s, byk in sorted(grids.items()) for k in sorted(byk, key=int)) or "none"
        raise NoisecraftError(f"no grid tuned for {sampler} at {steps} steps in this model (tuned: {have}): run "
                              f"`noisecraft tune --model MODEL --sampler {sampler} --steps {steps}` or pick another spacing")
    return custom_timesteps(grids[sampler][str(steps)], schedule)


SPACINGS = {"leading": leading, "trailing": trailing, "linspace": linspace, "karras": karras, "logsnr": logsnr}


def timesteps(spacing: str, steps: int, schedule: NoiseSchedule) -> torch.Tensor:
    """The decreasing grid for `steps` solver steps."""
    if spacing not in SPACINGS:
        raise NoisecraftError(f"unknown spacing {spacing!r}: use one of {', '.join(SPACINGS)}, tuned "
                              "(a grid saved with the model) or a list of timesteps")
    T = schedule.num_timesteps
    if not 1 <= steps <= T:
        raise NoisecraftError(f"steps must be between 1 and {T} (the schedule's length), got {steps}")
    grid = SPACINGS[spacing](steps, schedule)
    if len(np.unique(grid)) != steps or grid.min() < 0:
        raise NoisecraftError(f"spacing {spacing!r} cannot place {steps} distinct steps in T={T}: use 'trailing'")
    return torch.tensor(grid.copy(), dtype=torch.float64)
