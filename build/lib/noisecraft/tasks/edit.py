"""SDEdit (Meng et al. 2022): edit an image by noising it part of the way and denoising it back.

Strength s in [0, 1] picks how far: the input is taken to t = s (T - 1) by the forward process
q(x_t | x_0) (DDPM eq. 4) and any sampler then runs the rest of its grid down to t = 0. The grid is
the one the sampler would use for `steps` steps from pure noise, cut at t (diffusers' img2img
convention), so strength 0.5 with 20 steps runs about 10 steps; a strength below the grid's last
timestep takes one step from t. Small s keeps the input's layout and fixes details; s = 1 forgets the
input and is an ordinary sample from pure noise (the same one sample() draws for the same generator).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from noisecraft.diffusion import NoiseSchedule, q_sample
from noisecraft.errors import NoisecraftError
from noisecraft.samplers import Plan, model_defaults, plan, sample
from noisecraft.samplers.common import make_noise
from noisecraft.tasks.common import check_images


def check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise NoisecraftError(f"strength must be a number in [0, 1] (0 keeps the input, 1 ignores it), got {strength!r}")
    return float(strength)


def edit_plan(model, schedule: NoiseSchedule, strength: float, sampler: str = "ddim", steps: int | None = None,
              spacing: str | Sequence[float] | None = None, eta: float | None = None) -> tuple[Plan, torch.Tensor]:
    """(the sampler's full plan, the part of its grid an edit at `strength` runs); the grid is empty for strength 0."""
    strength = check_strength(strength)
    p = plan(model, schedule, sampler, steps, spacing, eta)
    if strength == 0:
        return p, p.grid[:0]
    t = strength * (schedule.num_timesteps - 1)
    grid = p.grid[p.grid <= t]
    if len(grid) == 0:
        grid = torch.tensor([t], dtype=torch.float64)
    if p.sampler == "learned" and len(grid) < len(p.grid):
        raise NoisecraftError("the learned sampler runs only the whole grid it was fitted on: edit with strength 1 "
                              "or pick another sampler")
    return p, grid


def edit(
    model,
    images: torch.Tensor,
    strength: float,
    *,
    schedule: NoiseSchedule | None = None,
    sampler: str = "ddim",
    steps: int | None = None,
    spacing: str | Sequence[float] | None = None,
    eta: float | None = None,
    prediction: str | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    cond: dict | None = None,
    guidance_scale: float = 1.0,
    negative_cond: dict | None = None,
    callback: Callable | None = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """SDEdit `images` (B, C, H, W) in [-1, 1] at `strength`; the other arguments are sample()'s.
    Returns (B, C, H, W) float32. Strength 0 returns the input unchanged. A latent diffusion model noises
    and denoises the images' latents (model.encode), then decodes them."""
    images = check_images(images)
    schedule, prediction = model_defaults(model, schedule, prediction)
    p, grid = edit_plan(model, schedule, strength, sampler, steps, spacing, eta)
    if len(grid) == 0:
        return images.float().clone()
    # A latent diffusion model edits the images' latents (SDEdit in latent space, as Stable Diffusion's
    # img2img does); sample() decodes the result.
    x0 = model.encode(images) if getattr(model, "vae", None) is not None else images           # (B, c, h, w)
    noise = make_noise(x0.shape, generator, images.device)()
    # sample() starts from pure noise at the top of the schedule; an edit that starts there does the same,
    # which is what makes strength 1 an ordinary sample.
    top = float(grid[0]) >= schedule.num_timesteps - 1
    x_T = noise if top else q_sample(schedule, x0.double(), grid[:1].expand(len(images)), noise.double())
    whole = torch.equal(grid, p.grid)
    return sample(model, images.shape, schedule, sampler=p.sampler, steps=p.steps if whole else None,
                  spacing=(p.grid if p.spacing == "custom" else p.spacing) if whole else grid, eta=p.eta,
                  prediction=prediction, generator=generator, x_T=x_T, cond=cond, guidance_scale=guidance_scale,
                  negative_cond=negative_cond, callback=callback, clip_denoised=clip_denoised, device=images.device)
