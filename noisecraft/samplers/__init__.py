"""Samplers: plain functions behind one registry and one entry point, `sample()`.

NFE (model calls) per sampler, as a function of `steps`: see each function's `.nfe`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from noisecraft.diffusion import NoiseSchedule, check_prediction
from noisecraft.errors import NoisecraftError
from noisecraft.samplers.common import make_denoiser, make_noise
from noisecraft.samplers.ddim import ddim
from noisecraft.samplers.ddpm import ddpm, ddpm_large
from noisecraft.samplers.dpm import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from noisecraft.samplers.euler import euler, euler_a, heun
from noisecraft.samplers.spacing import SPACINGS, timesteps as make_timesteps

SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm,
    "ddpm_large": ddpm_large,
    "ddim": ddim,
    "euler": euler,
    "euler_a": euler_a,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise NoisecraftError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(
    model,
    shape: Sequence[int],
    schedule: NoiseSchedule | None = None,
    sampler: str = "ddim",
    steps: int | None = None,
    spacing: str | None = None,
    eta: float | None = None,
    prediction: str | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    x_T: torch.Tensor | None = None,
    cond: dict | None = None,
    guidance_scale: float = 1.0,
    callback: Callable | None = None,
    clip_denoised: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Generate images from pure noise. Returns x_0 of `shape`, float32, in about [-1, 1].

    `schedule` and `prediction` default to the model's own (`model.schedule`, `model.prediction`);
    `steps`, `spacing` and `eta` to the sampler's defaults (eta 0 for DDIM, 1 for the ancestral and
    SDE samplers); `cond` is passed to the model as keywords.
    """
    fn = get_sampler(sampler)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if schedule is None:
        raise NoisecraftError("no noise schedule: pass schedule=NoiseSchedule.linear() or a model that carries one")
    prediction = check_prediction(prediction or getattr(model, "prediction", "epsilon"))
    steps = fn.default_steps if steps is None else int(steps)
    grid = make_timesteps(spacing or fn.default_spacing, steps, schedule)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise NoisecraftError(f"shape must be (batch, channels, height, width) with positive sizes, got {shape}")
    eta = fn.default_eta if eta is None else float(eta)
    if eta < 0:
        raise NoisecraftError(f"eta must be >= 0, got {eta}")
    if device is None:
        param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = param.device if param is not None else torch.device("cpu")
    noise = make_noise(shape, generator, device)
    x = (noise() if x_T is None else x_T.to(device)).double()
    if tuple(x.shape) != shape:
        raise NoisecraftError(f"x_T has shape {tuple(x.shape)} but shape is {shape}")
    cond = dict(cond or {})
    if guidance_scale != 1.0:
        from noisecraft.guidance import guided
        model = guided(model, cond, guidance_scale)
        cond = {}
    denoise = make_denoiser(model, schedule, prediction, cond, clip_denoised)
    with torch.inference_mode():
        return fn(denoise, x, grid, schedule, noise=noise, eta=eta, callback=callback).float()


__all__ = ["SAMPLERS", "SPACINGS", "sample", "get_sampler", "make_timesteps"]
