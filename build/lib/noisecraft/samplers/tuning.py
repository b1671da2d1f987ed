"""Timestep grids tuned for one model and one step budget, saved with the model (grids.json).

In the spirit of "Align Your Steps" (Sabour et al. 2024), which places a few-step grid where a given
model needs it, but with a direct objective: the mean distance (RMS per image) between where the solver takes a
calibration batch of noise and where the probability-flow ODE takes it (a converged 3rd-order solve).
Grids are parameterized by their log-sigma increments (a softmax, so they stay decreasing), start from
the best fixed spacing and are refined by Nelder-Mead; the first point stays at t = T-1 (pure noise).
`tune_learned` does the same for the learned sampler, fitting its coefficients to each candidate grid.
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
    from noisecraft.samplers import sample

    schedule = schedule if schedule is not None else model.schedule
    check_tunable(sampler)
    x_T = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    common = dict(schedule=schedule, x_T=x_T, clip_denoised=clip_denoised, cond=cond)
    ref = sample(model, x_T.shape, sampler="dpmpp_3m", steps=reference_steps, spacing="logsnr", **common).double()

    def error(grid: torch.Tensor) -> float:
        return endpoint_error(sample(model, x_T.shape, sampler=sampler, spacing=grid, **common), ref)

    grid, info = search_grid(error, steps, schedule, max_evals, callback)
    return grid, info | {"n": n, "seed": seed, "reference": f"dpmpp_3m logsnr {reference_steps} steps"}


def endpoint_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over images of each image's RMS error: a few images that land in another mode (large errors
    that are noise in the calibration batch) do not dominate the objective as in a global RMS."""
    return float((x.double() - ref).flatten(1).pow(2).mean(1).sqrt().mean())


def search_grid(error, steps: int, schedule: NoiseSchedule, max_evals: int | None, callback=None,
                restarts: int = 1) -> tuple[torch.Tensor, dict]:
    """Minimize error(grid) over grids of `steps` points: the best fixed spacings, refined by Nelder-Mead
    (at most `max_evals` evaluations from each of `restarts` starts)."""
    from noisecraft.samplers import SPACINGS, make_timesteps
    from scipy.optimize import minimize

    evals = 0

    def counted(grid: torch.Tensor) -> float:
        nonlocal evals
        evals += 1
        e = error(grid)
        if callback is not None:
            callback(evals, e)
        return e

    starts = {}
    for name in SPACINGS:
        try:
            starts[name] = counted(make_timesteps(name, steps, schedule))
        except NoisecraftError:
            continue                                    # e.g. leading cannot place this many steps
    start = min(starts, key=starts.get)
    best, err = make_timesteps(start, steps, schedule), starts[start]
    if steps > 1:
        def objective(theta: np.ndarray) -> float:
            grid = _grid_from_theta(theta, schedule)
            if bool((grid.diff() >= 0).any()):        # two points merged after rounding: not a valid grid
                return math.inf
            return counted(grid)

        # Nelder-Mead is local, so it starts from each of the `restarts` best fixed spacings in turn.
        budget = max_evals if max_evals is not None else 40 * (steps + 1)
        for name in sorted(starts, key=starts.get)[:restarts]:
            result = minimize(objective, _theta_from_grid(make_timesteps(name, steps, schedule), schedule),
                              method="Nelder-Mead", options={"maxfev": budget, "xatol": 1e-3, "fatol": 1e-6, "adaptive": True})
            if result.fun < err:                        # never return worse than the fixed spacing
                best, err = _grid_from_theta(result.x, schedule), float(result.fun)
    return best, {"start": start, "start_error": starts[start], "error": err, "evals": evals}


class ExactODE:
    """Where the probability-flow ODE takes fixed noise x_T, at any sigma: one dense third-order solve
    (DPM-Solver++(3M), uniform in log-SNR), read by linear interpolation in log-sigma between its steps."""

    def __init__(self, model, x_T: torch.Tensor, schedule: NoiseSchedule, steps: int, **common):
        from noisecraft.samplers import make_timesteps, sample

        grid = make_timesteps("logsnr", steps, schedule)
        states = [x_T.float()]                          # VP states at the grid points, float32 to save memory
        self.end = sample(model, x_T.shape, schedule=schedule, sampler="dpmpp_3m", spacing=grid, x_T=x_T,
                          callback=lambda i, x, x0: states.append(x.float()), **common).double()
        self.states = torch.stack(states[:-1])                           # (steps, n, C, H, W)
        self.log_sigma = schedule.t_to_sigma(grid).log().numpy()[::-1].copy()   # increasing

    def at(self, sigma: float) -> torch.Tensor:
        """The state at sigma in the VE view (x_0 + sigma eps), float64; sigma = 0 is the clean endpoint."""
        if sigma == 0:
            return self.end
        pos = float(np.interp(math.log(sigma), self.log_sigma, np.arange(len(self.log_sigma))[::-1]))
        k = min(int(pos), len(self.states) - 2)
        w = pos - k
        x = (1 - w) * self.states[k].double() + w * self.states[k + 1].double()
        return x * (1 + sigma ** 2) ** 0.5


def tune_learned(model, shape, steps: int, *, schedule: NoiseSchedule | None = None, n: int = 128, seed: int = 0,
                 reference_steps: int = 300, max_evals: int | None = None, clip_denoised: bool = True,
                 cond: dict | None = None, callback=None) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    """A grid and the learned sampler's coefficients for it (samplers/learned.py). Coefficients are fitted
    on n calibration noise images and each grid is scored on n other ones, so the grid search does not
    reward a fit to its own data. `cond` tensors are batched like n images. Returns (grid, coefficients, info)."""
    from noisecraft.diffusion import check_prediction
    from noisecraft.samplers.common import make_denoiser, sigma_grid, ve_denoiser
    from noisecraft.samplers.learned import fit_coefficients, learned

    schedule = schedule if schedule is not None else model.schedule
    noise = torch.randn(2 * n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cond = dict(cond or {})                             # batched like n images; used for both halves
    exact = ExactODE(model, noise, schedule, reference_steps, clip_denoised=clip_denoised,
                     cond={k: torch.cat([v, v]) for k, v in cond.items()})
    prediction = check_prediction(getattr(model, "prediction", "epsilon"))
    denoise = make_denoiser(model, schedule, prediction, cond, clip_denoised)

    def fit(grid: torch.Tensor) -> list[torch.Tensor]:
        sigmas = sigma_grid(schedule, grid).tolist()
        targets = [exact.at(s)[:n] for s in sigmas[1:]]
        x = noise[:n] * (1 + sigmas[0] ** 2) ** 0.5
        return fit_coefficients(ve_denoiser(denoise, schedule), x, sigmas, grid.tolist(), targets)

    def error(grid: torch.Tensor) -> float:
        with torch.inference_mode():
            x = learned(denoise, noise[n:], grid, schedule, noise=None, coefficients=fit(grid))
        return endpoint_error(x, exact.end[n:])

    grid, info = search_grid(error, steps, schedule, max_evals, callback, restarts=3)
    with torch.inference_mode():
        coefficients = fit(grid)
    return grid, coefficients, info | {"n": n, "seed": seed, "reference": f"dpmpp_3m logsnr {reference_steps} steps"}


def _read_doc(model_dir: str | Path) -> dict:
    path = Path(model_dir) / GRIDS_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        doc["grids"] = {s: {str(k): [float(t) for t in g] for k, g in byk.items()} for s, byk in doc["grids"].items()}
        doc["coefficients"] = {s: {str(k): [[float(c) for c in row] for row in rows] for k, rows in byk.items()}
                               for s, byk in doc.get("coefficients", {}).items()}
        return doc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError):
        raise NoisecraftError(f"{path} is not a valid grids file: delete it and run `noisecraft tune` again") from None


def read_grids(model_dir: str | Path) -> dict:
    """{sampler: {str(steps): [t, ...]}} from the model's grids.json; empty when there is none."""
    return _read_doc(model_dir).get("grids", {})


def read_coefficients(model_dir: str | Path) -> dict:
    """{sampler: {str(steps): [[c, ...], ...]}}: the learned sampler's coefficients saved with the model."""
    return _read_doc(model_dir).get("coefficients", {})


def save_grid(model_dir: str | Path, sampler: str, steps: int, grid: torch.Tensor, info: dict,
              coefficients: list[torch.Tensor] | None = None) -> Path:
    """Add (or replace) one tuned grid, with its coefficients when the sampler has any, atomically."""
    path = Path(model_dir) / GRIDS_FILE
    doc = _read_doc(model_dir)                          # refuses to extend a broken file
    doc.setdefault("grids", {}).setdefault(sampler, {})[str(steps)] = [round(float(t), 6) for t in grid]
    if coefficients is not None:
        doc.setdefault("coefficients", {}).setdefault(sampler, {})[str(steps)] = [
            [float(c) for c in row] for row in coefficients]
    doc.setdefault("info", {}).setdefault(sampler, {})[str(steps)] = info
    atomic_write_json(path, doc)
    return path
