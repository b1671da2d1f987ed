"""Samplers: plain functions behind one registry and one entry point, `sample()`.

NFE (model calls) per sampler, as a function of `steps`: see each function's `.nfe`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from noisecraft.diffusion import NoiseSchedule, check_prediction
from noisecraft.errors import NoisecraftError
from noisecraft.samplers.common import check_threshold, make_denoiser, make_noise, weights_cast_once
from noisecraft.samplers.ddim import ddim
from noisecraft.samplers.ddpm import ddpm, ddpm_large
from noisecraft.samplers.dpm import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from noisecraft.samplers.euler import euler, euler_a, heun
from noisecraft.samplers.learned import check_coefficients, learned
from noisecraft.samplers.unipc import unipc, unipc_bh1
from noisecraft.samplers.spacing import SPACINGS, custom_timesteps, timesteps as make_timesteps, tuned_grid
from noisecraft.samplers.auto import choose

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
    "unipc": unipc,
    "unipc_bh1": unipc_bh1,
    "learned": learned,
}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise NoisecraftError(f"unknown sampler {name!r}: use one of auto, {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


@dataclass(frozen=True)
class Plan:
    """What a sample() call will run: the resolved sampler, its grid and its noise level."""

    sampler: str
    fn: Callable
    steps: int
    spacing: str                 # a SPACINGS name, "tuned", or "custom" for a grid passed in
    grid: torch.Tensor           # (steps,) float64, decreasing
    eta: float
    options: dict = field(default_factory=dict)   # sampler-specific keywords: the learned sampler's coefficients

    @property
    def nfe(self) -> int:
        return self.fn.nfe(self.steps)


def plan(model, schedule: NoiseSchedule, sampler: str = "ddim", steps: int | None = None,
         spacing: str | Sequence[float] | None = None, eta: float | None = None) -> Plan:
    """Resolve names and defaults into a Plan; every bad option is a NoisecraftError here, before any work.
    sampler "auto" picks the best measured sampler and grid for `steps` model calls (samplers/auto.py);
    spacing "tuned" uses the grid tuned for this sampler and step count and saved with the model;
    a sequence of timesteps is used as the grid itself."""
    if sampler == "auto":
        sampler, steps, auto_spacing = choose(steps, getattr(model, "grids", None))
        spacing = spacing if spacing is not None else auto_spacing
    fn = get_sampler(sampler)
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps):
        raise NoisecraftError(f"steps must be a whole number, got {steps!r}")
    if sampler == "learned":
        return _learned_plan(model, schedule, fn, fn.default_steps if steps is None else int(steps),
                             spacing or fn.default_spacing)
    if spacing is not None and not isinstance(spacing, str):
        grid = custom_timesteps(spacing, schedule)
        if steps is not None and int(steps) != len(grid):
            raise NoisecraftError(f"steps={steps} but the grid passed as spacing has {len(grid)} timesteps")
        return Plan(sampler, fn, len(grid), "custom", grid, _eta(fn, eta))
    steps = fn.default_steps if steps is None else int(steps)
    spacing = spacing or fn.default_spacing
    if spacing == "tuned":
        grid = tuned_grid(model, sampler, steps, schedule)
    else:
        grid = make_timesteps(spacing, steps, schedule)
    return Plan(sampler, fn, steps, spacing, grid, _eta(fn, eta))


def _learned_plan(model, schedule: NoiseSchedule, fn: Callable, steps: int, spacing: str) -> Plan:
    """The learned sampler runs only on the grid its coefficients were fitted for."""
    if spacing != "tuned":
        raise NoisecraftError(f"the learned sampler's coefficients belong to their own grid: use spacing 'tuned', "
                              f"not {spacing if isinstance(spacing, str) else 'a custom grid'}")
    grid = tuned_grid(model, "learned", steps, schedule)
    saved = (getattr(model, "coefficients", None) or {}).get("learned", {}).get(str(steps))
    if saved is None:
        raise NoisecraftError(f"no learned coefficients for {steps} steps in this model: run "
                              f"`noisecraft tune --model MODEL --sampler learned --steps {steps}`")
    return Plan("learned", fn, steps, "tuned", grid, 0.0, {"coefficients": check_coefficients(saved, steps)})


def _eta(fn: Callable, eta: float | None) -> float:
    eta = fn.default_eta if eta is None else float(eta)
    if not eta >= 0:
        raise NoisecraftError(f"eta must be >= 0, got {eta}")
    return eta


def model_defaults(model, schedule: NoiseSchedule | None, prediction: str | None) -> tuple[NoiseSchedule, str]:
    """The schedule and prediction type, defaulting to the model's own (`model.schedule`, `model.prediction`)."""
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if schedule is None:
        raise NoisecraftError("no noise schedule: pass schedule=NoiseSchedule.linear() or a model that carries one")
    return schedule, check_prediction(prediction or getattr(model, "prediction", "epsilon"))


def guided_denoiser(model, schedule: NoiseSchedule, prediction: str, cond: dict | None, guidance_scale: float = 1.0,
                    negative_cond: dict | None = None, clip_denoised: bool = True,
                    dynamic_threshold: float | None = None):
    """The sampler protocol's denoise(x_t, t) for `model`, with classifier-free guidance when guidance_scale != 1."""
    cond = dict(cond or {})
    if guidance_scale != 1.0:
        from noisecraft.guidance import guided
        model, cond = guided(model, cond, guidance_scale, negative_cond), {}
    return make_denoiser(model, schedule, prediction, cond, clip_denoised, dynamic_threshold)


def sample(
    model,
    shape: Sequence[int],
    schedule: NoiseSchedule | None = None,
    sampler: str = "ddim",
    steps: int | None = None,
    spacing: str | Sequence[float] | None = None,
    eta: float | None = None,
    prediction: str | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    x_T: torch.Tensor | None = None,
    cond: dict | None = None,
    guidance_scale: float = 1.0,
    negative_cond: dict | None = None,
    callback: Callable | None = None,
    clip_denoised: bool = True,
    dynamic_threshold: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Generate images from pure noise. Returns x_0 of `shape`, float32, in about [-1, 1].

    `schedule` and `prediction` default to the model's own (`model.schedule`, `model.prediction`);
    `steps`, `spacing` and `eta` to the sampler's defaults (eta 0 for DDIM, 1 for the ancestral and
    SDE samplers); see `plan()` for "auto", "tuned" and custom grids. `cond` is passed to the model
    as keywords; with guidance_scale != 1, `negative_cond` (same keys) replaces the unconditional
    branch. `clip_denoised` clips each x_0 estimate to [-1, 1]; `dynamic_threshold=p` instead clips
    it at the p-quantile of its absolute values and rescales (Imagen, Saharia et al. 2022).

    A latent diffusion model (one carrying a VAE, `model.decode`; noisecraft train --latent) is sampled in
    its latent space and the result decoded: `shape` is still the shape of the images returned,
    (batch, *model.config.image_shape), while `x_T` and the `callback`'s x_t and x0_pred have the latents'
    shape (batch, *model.config.unet_shape). Latents are unbounded, so `clip_denoised` does not apply to
    them (the decoded images are clipped) and `dynamic_threshold` is an error.
    """
    schedule, prediction = model_defaults(model, schedule, prediction)
    p = plan(model, schedule, sampler, steps, spacing, eta)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise NoisecraftError(f"shape must be (batch, channels, height, width) with positive sizes, got {shape}")
    check_threshold(dynamic_threshold)
    latent = getattr(model, "vae", None) is not None
    if latent and dynamic_threshold is not None:
        raise NoisecraftError("dynamic thresholding bounds pixels, and a latent diffusion model's x_0 are unbounded "
                              "VAE latents: drop dynamic_threshold")
    x_shape = latent_shape(model, shape) if latent else shape
    if device is None:
        param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = param.device if param is not None else torch.device("cpu")
    noise = make_noise(x_shape, generator, device)
    x = (noise() if x_T is None else x_T.to(device)).double()
    if tuple(x.shape) != x_shape:
        raise NoisecraftError(f"x_T has shape {tuple(x.shape)} but the model denoises {x_shape}"
                              + (f" (the latents of {shape} images)" if latent else ""))
    denoise = guided_denoiser(model, schedule, prediction, cond, guidance_scale, negative_cond,
                              clip_denoised and not latent, dynamic_threshold)
    with torch.inference_mode(), weights_cast_once(model):
        x0 = p.fn(denoise, x, p.grid, schedule, noise=noise, eta=p.eta, callback=callback, **p.options)
        return (model.decode(x0) if latent else x0).float()


def as_images(model, x: torch.Tensor) -> torch.Tensor:
    """A callback's x_t or x0_pred as images to show: a latent diffusion model's decoded, others' as they are."""
    return model.decode(x) if getattr(model, "vae", None) is not None else x


def latent_shape(model, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The latents' shape (batch, *unet_shape) for a latent diffusion model asked for images of `shape`."""
    config = model.config
    if tuple(shape[1:]) != config.image_shape:
        raise NoisecraftError(f"this latent diffusion model makes {config.image_shape} images: pass shape=(batch, "
                              f"{', '.join(map(str, config.image_shape))}), the images' shape (its UNet denoises "
                              f"{config.unet_shape} latents, which sample() decodes), got {tuple(shape)}")
    return (shape[0], *config.unet_shape)


__all__ = ["SAMPLERS", "SPACINGS", "Plan", "plan", "sample", "get_sampler", "make_timesteps", "model_defaults",
           "guided_denoiser", "latent_shape", "as_images"]
