"""Timestep grids tuned for one model and one step budget, saved with the model (grids.json).

In the spirit of "Align Your Steps" (Sabour et al. 2024), which places a few-step grid where a given
model needs it, but with a direct objective: the mean distance (RMS per image) between where the solver takes a
calibration batch of noise and where the probability-flow ODE takes it (a converged 3rd-order solve).
Grids are parameterized by their log-sigma increments (a softmax, so they stay decreasing), start from
the best fixed spacing and are refined by Nelder-Mead; the first point stays at t = T-1 (pure noise).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from noisecraft.diffusion import NoiseSchedule
from noisecraft.errors import NoisecraftError
from noisecraft.io import atomic_write_json

GRIDS_FILE = "grids.json"
STOCHASTIC = ("ddpm", "ddpm_large", "euler_a", "dpmpp_2m_sde")


def _grid_from_theta(theta: np.ndarray, schedule: NoiseSchedule) -> torch.Tensor:
    hi, lo = math.log(float(schedule.sigmas[-1])), math.log(float(schedule.sigmas[0]))
    inc = np.exp(theta - theta.max())
    u = np.cumsum(inc / inc.sum())[:-1]                           # the last increment is slack above t = 0
    log_sigma = np.concatenate([[hi], hi - (hi - lo) * u])
    t = schedule.sigma_to_t(torch.from_numpy(np.exp(log_sigma))).double()
    t[0] = schedule.num_timesteps - 1
    return t


def _theta_from_grid(grid: torch.Tensor, schedule: NoiseSchedule) -> np.ndarray:
    hi, lo = math.log(float(schedule.sigmas[-1])), math.log(float(schedule.sigmas[0]))
    u = (hi - schedule.t_to_sigma(grid).log().numpy()) / (hi - lo)
    inc = np.diff(np.concatenate([[0.0], u[1:], [1.0]]))
    return np.log(np.clip(inc, 1e-4, None))


def check_tunable(sampler: str) -> None:
    from noisecraft.samplers import get_sampler

    get_sampler(sampler)
    if sampler in STOCHASTIC:
        raise NoisecraftError(f"{sampler} draws fresh noise every step; tune a deterministic sampler "
                              f"(not {', '.join(STOCHASTIC)})")


def tune_grid(model, shape, sampler: str, steps: int, *, schedule: NoiseSchedule | None = None,
              n: int = 64, seed: int = 0, reference_steps: int = 200, max_evals: int | None = None,
              clip_denoised: bool = True, cond: dict | None = None, callback=None) -> tuple[torch.Tensor, dict]:
    """The grid of `steps` timesteps that brings `sampler` closest to the exact ODE endpoint of n noise
    images of `shape` (C, H, W). Returns (grid, info with the starting spacing and both errors)."""
    from noisecraft.samplers import SPACINGS, make_timesteps, sample
    from scipy.optimize import minimize

    schedule = schedule if schedule is not None else model.schedule
    check_tunable(sampler)
    x_T = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    common = dict(schedule=schedule, x_T=x_T, clip_denoised=clip_denoised, cond=cond)
    ref = sample(model, x_T.shape, sampler="dpmpp_3m", steps=reference_steps, spacing="logsnr", **common).double()

    evals = 0

    def error(grid: torch.Tensor) -> float:
        nonlocal evals
        evals += 1
        x = sample(model, x_T.shape, sampler=sampler, spacing=grid, **common).double()
        # Mean over images of each image's RMS error: a few images that land in another mode (large
        # errors that are noise in the calibration batch) do not dominate the objective as in a global RMS.
        return float((x - ref).flatten(1).pow(2).mean(1).sqrt().mean())

    starts = {}
    for name in SPACINGS:
        try:
            starts[name] = error(make_timesteps(name, steps, schedule))
        except NoisecraftError:
            continue                                    # e.g. leading cannot place this many steps
    start = min(starts, key=starts.get)
    if steps == 1:
        grid = make_timesteps(start, 1, schedule)
        return grid, {"start": start, "start_error": starts[start], "error": starts[start], "evals": evals}

    theta0 = _theta_from_grid(make_timesteps(start, steps, schedule), schedule)

    def objective(theta: np.ndarray) -> float:
        grid = _grid_from_theta(theta, schedule)
        if bool((grid.diff() >= 0).any()):            # two points merged after rounding: not a valid grid
            return math.inf
        e = error(grid)
        if callback is not None:
            callback(evals, e)
        return e

    budget = max_evals if max_evals is not None else 40 * (steps + 1)
    result = minimize(objective, theta0, method="Nelder-Mead",
                      options={"maxfev": budget, "xatol": 1e-3, "fatol": 1e-6, "adaptive": True})
    best = _grid_from_theta(result.x, schedule)
    err = error(best)
    if err >= starts[start]:                             # never return worse than the fixed spacing
        best, err = make_timesteps(start, steps, schedule), starts[start]
    info = {"start": start, "start_error": starts[start], "error": err, "evals": evals, "n": n, "seed": seed,
            "reference": f"dpmpp_3m logsnr {reference_steps} steps"}
    return best, info


def read_grids(model_dir: str | Path) -> dict:
    """{sampler: {str(steps): [t, ...]}} from the model's grids.json; empty when there is none."""
    path = Path(model_dir) / GRIDS_FILE
    if not path.is_file():
        return {}
    try:
        grids = json.loads(path.read_text())["grids"]
        return {s: {str(k): [float(t) for t in g] for k, g in byk.items()} for s, byk in grids.items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError):
        raise NoisecraftError(f"{path} is not a valid grids file: delete it and run `noisecraft tune` again") from None


def save_grid(model_dir: str | Path, sampler: str, steps: int, grid: torch.Tensor, info: dict) -> Path:
    """Add (or replace) one tuned grid in the model's grids.json, atomically."""
    path = Path(model_dir) / GRIDS_FILE
    read_grids(model_dir)                               # refuse to extend a broken file
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.setdefault("grids", {}).setdefault(sampler, {})[str(steps)] = [round(float(t), 6) for t in grid]
    doc.setdefault("info", {}).setdefault(sampler, {})[str(steps)] = info
    atomic_write_json(path, doc)
    return path
