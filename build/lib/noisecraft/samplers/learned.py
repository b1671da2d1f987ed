"""A multistep solver whose coefficients are fitted to one model's probability-flow ODE.

Every deterministic one-call-per-step solver in the VE view (x = x_0 + sigma eps) is linear in its inputs:
the state after step i is a fixed combination of the starting noise and the x_0 estimates made so far,
    x_{i+1} = c_{i,0} x_start + sum_{j <= i} c_{i,j+1} D_j,    D_j = D(x_j, sigma_j),
and DDIM, DPM-Solver++ and UniPC are particular choices of c derived from Taylor expansions. Here c is
fitted instead (in the spirit of DPM-Solver-v3's empirical model statistics, Zheng et al. 2023): step by
step, by least squares, so that the solver's state lands where the exact ODE puts the same calibration
noise at sigma_{i+1}. The fit is ridge-regularized towards the DDIM step, so a direction the calibration
data does not pin down stays at the first-order solution. The coefficients belong to their grid; both
are stored with the model (grids.json) by `noisecraft tune --sampler learned`.
"""
from __future__ import annotations

import torch

from noisecraft.errors import NoisecraftError
from noisecraft.samplers.common import sampler_info, sigma_grid, ve_denoiser


def combine(c: torch.Tensor, x_start: torch.Tensor, estimates: list) -> torch.Tensor:
    """c_0 x_start + sum_j c_{j+1} D_j: one step of the linear solver."""
    x = c[0] * x_start
    for cj, d in zip(c[1:].tolist(), estimates):
        x = x + cj * d
    return x


def check_coefficients(coefficients, steps: int) -> list[torch.Tensor]:
    """Coefficients as saved (one list per step, step i has i + 2 numbers), checked against the grid."""
    try:
        rows = [torch.as_tensor(row, dtype=torch.float64) for row in coefficients]
    except (TypeError, ValueError, RuntimeError):
        rows = None
    if rows is None or len(rows) != steps or any(r.shape != (i + 2,) or not bool(torch.isfinite(r).all())
                                                 for i, r in enumerate(rows)):
        raise NoisecraftError(f"learned coefficients for {steps} steps must be {steps} lists of 2, 3, ... finite "
                              "numbers: run `noisecraft tune --sampler learned` again")
    return rows


def fit_coefficients(D, x: torch.Tensor, sigmas: list[float], timesteps: list[float], targets: list,
                     ridge: float = 1e-6) -> list[torch.Tensor]:
    """Least-squares coefficients, step by step along the solver's own trajectory. `x` is the calibration
    noise in the VE view, `targets[i]` the exact ODE state at sigmas[i + 1] (the last one the clean endpoint)."""
    x_start, estimates, coefficients, prev = x, [], [], torch.ones(1, dtype=torch.float64)
    for i, t in enumerate(timesteps):
        estimates.append(D(x, sigmas[i], t))
        F = torch.stack([x_start, *estimates], -1).reshape(-1, i + 2)              # (n * pixels, i + 2)
        r = sigmas[i + 1] / sigmas[i]
        base = torch.cat([r * prev, torch.tensor([1 - r], dtype=torch.float64)])    # the DDIM step
        residual = targets[i].reshape(-1) - F @ base
        scale = F.pow(2).mean(0).sqrt().clamp(min=1e-12)                          # ridge on comparable units
        Fn = F / scale
        A = Fn.T @ Fn / len(residual) + ridge * torch.eye(i + 2, dtype=torch.float64)
        prev = base + torch.linalg.solve(A, Fn.T @ residual / len(residual)) / scale
        coefficients.append(prev)
        x = combine(prev, x_start, estimates)
    return coefficients


@sampler_info(nfe=lambda steps: steps, default_steps=10, default_spacing="tuned", default_eta=0.0)
def learned(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None, coefficients=None):
    """The fitted linear multistep solver above; needs coefficients fitted for this model, grid and step
    count (`noisecraft tune --sampler learned`). One model call per step; eta unused."""
    if coefficients is None:
        raise NoisecraftError("the learned sampler needs coefficients fitted to the model: run "
                              "`noisecraft tune --model MODEL --sampler learned --steps K` first")
    coefficients = check_coefficients(coefficients, len(timesteps))
    sigmas, ts, D = sigma_grid(schedule, timesteps).tolist(), timesteps.tolist(), ve_denoiser(denoise, schedule)
    x = x_start = x * (1 + sigmas[0] ** 2) ** 0.5
    estimates = []
    for i, t in enumerate(ts):
        estimates.append(D(x, sigmas[i], t))
        x = combine(coefficients[i], x_start, estimates)
        if callback is not None:
            callback(i, x / (1 + sigmas[i + 1] ** 2) ** 0.5, estimates[-1])
    return x
