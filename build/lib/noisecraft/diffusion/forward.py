"""The forward process q and its posterior (Ho et al. 2020, §2)."""
from __future__ import annotations

import torch

from noisecraft.diffusion.schedule import NoiseSchedule


def expand(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample scalars (B,) -> (B, 1, 1, 1) in x's dtype and device, for broadcasting."""
    return values.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return expand(values[t.long().cpu()], x)


def q_step(schedule: NoiseSchedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One forward step, DDPM eq. 2: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
    beta = _at(schedule.betas, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Closed form, DDPM eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
    `t` may be fractional (alpha_bar interpolated in log-sigma)."""
    ab = expand(schedule.alpha_bar(t.detach().cpu()), x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_posterior(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM eqs. 6-7: q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I) with
    mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t.
    Returns (mean, variance); the variance broadcasts against x."""
    return posterior_between(schedule.alpha_bar(t.cpu()), schedule.alpha_bar(t.cpu() - 1), x0, x_t)


def posterior_between(
    ab_t: torch.Tensor, ab_s: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q(x_s | x_t, x_0) for any s < t, written with alpha_bar only so it serves respaced
    grids (Nichol & Dhariwal 2021, §4): the step's beta is 1 - alpha_bar_t / alpha_bar_s."""
    # Coefficients in float64: 1 - a_t/a_s cancels badly in float32 when a step is small.
    ab_t, ab_s = torch.as_tensor(ab_t, dtype=torch.float64), torch.as_tensor(ab_s, dtype=torch.float64)
    beta = 1 - ab_t / ab_s
    coef_x0 = ab_s.sqrt() * beta / (1 - ab_t)
    coef_xt = (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t)
    variance = (1 - ab_s) / (1 - ab_t) * beta
    return expand(coef_x0, x0) * x0 + expand(coef_xt, x_t) * x_t, expand(variance, x_t)
