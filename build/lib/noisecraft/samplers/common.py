"""What every sampler shares: the denoiser it calls, the noise it draws, its metadata.

A sampler is a plain function
    sampler(denoise, x, timesteps, schedule, *, noise, eta, callback) -> x_0
where `denoise(x_t, t) -> (x0_hat, eps_hat)` hides the network, its parameterization,
conditioning and clipping; `timesteps` is the decreasing float64 grid (one entry per solver
step); `noise()` draws a fresh standard normal tensor shaped like x (per-image generators
respected); `callback(i, x_t, x0_hat)` runs after each step.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from noisecraft.diffusion import NoiseSchedule, eps_from_x0, to_x0_eps
from noisecraft.errors import NoisecraftError

Denoiser = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def sampler_info(*, nfe: Callable[[int], int], default_steps: int, default_spacing: str, default_eta: float):
    """Attach a sampler's documented cost (model calls as a function of steps) and defaults."""
    def mark(fn):
        fn.nfe, fn.default_steps, fn.default_spacing, fn.default_eta = nfe, default_steps, default_spacing, default_eta
        return fn
    return mark


def alpha_bar_grid(schedule: NoiseSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """alpha_bar at each grid point plus a final 1.0 for the clean image: (steps + 1,) float64."""
    return torch.cat([schedule.alpha_bar(timesteps), torch.ones(1, dtype=torch.float64)])


def weights_cast_once(model):
    """The context a sampling loop runs in: a noisecraft model's cast_once() (bf16 weights cast once for the
    whole loop, noisecraft/device.py), or nothing for any other model."""
    return getattr(model, "cast_once", contextlib.nullcontext)()


def make_noise(shape: Sequence[int], generator, device) -> Callable[[], torch.Tensor]:
    """Standard normal draws. A list of generators gives image i its own stream, so image i
    is the same whatever batch it is drawn in (EDM's StackedRandomGenerator)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise NoisecraftError(f"got {len(generator)} generators for a batch of {shape[0]}: pass one per image")
        return lambda: torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)
    if generator is None:
        return lambda: torch.randn(shape, device=device)
    return lambda: torch.randn(shape, generator=generator, device=generator.device).to(device)


def check_threshold(quantile: float | None) -> None:
    if quantile is not None and not 0 < quantile <= 1:
        raise NoisecraftError(f"dynamic_threshold is a quantile in (0, 1], e.g. 0.995; got {quantile}")


def dynamic_threshold_x0(x0: torch.Tensor, quantile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): s = the quantile of |x0| per image, at
    least 1; clip x0 to [-s, s] and divide by s, which pulls saturated pixels in instead of flattening them."""
    s = torch.quantile(x0.abs().flatten(1), quantile, dim=1).clamp(min=1).view(-1, *[1] * (x0.dim() - 1))
    return x0.clamp(-s, s) / s


def make_denoiser(model, schedule: NoiseSchedule, prediction: str, cond: dict, clip_denoised: bool,
                  dynamic_threshold: float | None = None) -> Denoiser:
    """The network in float32; everything around it in float64. In the sigma view x grows to
    sigma_max * |x_0| (2e4 for the cosine schedule), where float32 rounding alone moved Heun's
    output by 0.4 against a float64 run; the extra cost is a few elementwise ops per step."""
    def denoise(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        t_batch = torch.full((x.shape[0],), float(t), device=x.device)
        a = schedule.alpha_bar(float(t)).to(device=x.device, dtype=torch.float64)
        x0, eps = to_x0_eps(model(x.float(), t_batch, **cond).double(), x, a, prediction)
        if dynamic_threshold is not None or clip_denoised:
            # As diffusers' clip_sample / thresholding: limit x_0, then make eps consistent with it.
            x0 = dynamic_threshold_x0(x0, dynamic_threshold) if dynamic_threshold is not None else x0.clamp(-1, 1)
            eps = eps_from_x0(x, x0, a)
        return x0, eps
    return denoise


def sigma_grid(schedule: NoiseSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - alpha_bar)/alpha_bar) at each grid point plus a final 0: (steps + 1,) float64."""
    return torch.cat([schedule.t_to_sigma(timesteps), torch.zeros(1, dtype=torch.float64)])


def ve_denoiser(denoise: Denoiser, schedule: NoiseSchedule):
    """The denoiser in the variance-exploding view of Karras et al. (2022), x = x_0 + sigma eps, which
    is the VP x_t divided by sqrt(alpha_bar): D(x, sigma) = x0_hat(x / sqrt(1 + sigma^2), t(sigma)).
    `t` may be passed when known, to avoid the sigma -> t round trip."""
    def D(x: torch.Tensor, sigma: float, t: float | None = None) -> torch.Tensor:
        t = float(schedule.sigma_to_t(sigma)) if t is None else t
        x0, _ = denoise(x / (1 + sigma ** 2) ** 0.5, t)
        return x0
    return D
