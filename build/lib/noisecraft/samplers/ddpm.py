"""Ancestral sampling (Ho et al. 2020, Algorithm 2), on any decreasing grid."""
from __future__ import annotations

import torch

from noisecraft.diffusion import posterior_between
from noisecraft.samplers.common import alpha_bar_grid, sampler_info


def _ancestral(denoise, x, timesteps, schedule, noise, callback, large_variance: bool):
    ab = alpha_bar_grid(schedule, timesteps)
    for i, t in enumerate(timesteps.tolist()):
        x0, _ = denoise(x, t)
        # p(x_s | x_t) = q(x_s | x_t, x0_hat): DDPM eqs. 6-7 with x0_hat from eq. 15.
        mean, var = posterior_between(ab[i], ab[i + 1], x0, x)
        if large_variance:
            var = torch.full_like(var, float(1 - ab[i] / ab[i + 1]))   # sigma_t^2 = beta_t (DDPM §3.2)
        x = mean + var.sqrt() * noise() if i < len(timesteps) - 1 else mean
        if callback is not None:
            callback(i, x, x0)
    return x


@sampler_info(nfe=lambda steps: steps, default_steps=1000, default_spacing="trailing", default_eta=1.0)
def ddpm(denoise, x, timesteps, schedule, *, noise, eta=1.0, callback=None):
    """DDPM with the posterior variance beta_tilde_t ("fixed small"); one model call per step.
    With fewer than T steps it samples the respaced chain (Nichol & Dhariwal 2021, §4). eta is unused."""
    return _ancestral(denoise, x, timesteps, schedule, noise, callback, large_variance=False)


@sampler_info(nfe=lambda steps: steps, default_steps=1000, default_spacing="trailing", default_eta=1.0)
def ddpm_large(denoise, x, timesteps, schedule, *, noise, eta=1.0, callback=None):
    """DDPM with variance beta_t ("fixed large", the upper bound of DDPM §3.2); one call per step."""
    return _ancestral(denoise, x, timesteps, schedule, noise, callback, large_variance=True)
