"""Zero-shot super-resolution: any unconditional model upsamples a low-resolution image y by keeping
its samples consistent with y, A x = y, where A is the factor x factor box average (box_down).

Two ways to impose consistency during sampling (METHODS):
- "project" (default): each x_0 estimate is projected onto {x : A x = y}. For the box average the
  projection is exact and cheap, x0 <- x0 + up(y - A x0) (as in DDNM, Wang et al. 2023, eq. 13, with
  A^+ = box_up), and the eps estimate is made consistent with the projected x0. It goes through the
  sampler protocol's denoiser, so it runs with every sampler; a sampler's output is an affine
  combination of x_0 estimates, so A x = y holds for the output to rounding.
- "ilvr" (Choi et al. 2021): DDPM ancestral steps where, after each step, the low-frequency part of x_{t-1}
  (box up(down(.))) is replaced by that of the reference noised to t-1.
On 100 held-out models/digits images (16x16; docs/tasks.md) both reach the same PSNR against the ground
truth at the same cost (DDPM, 100 steps: 47.0 vs 47.3 dB at x2, 20.7 vs 20.5 dB at x4), but projection
keeps the output consistent to rounding (59.1 vs 51.2 dB at x4, after 8-bit quantization) and works with
any sampler, so it is the default. DDPM's stochastic steps beat deterministic DDIM there (x4: 20.7 dB at
100 steps vs 18.4 dB at 50), so DDPM with 100 steps is the default sampler.

A model trained for super-resolution (SR3, Saharia et al. 2022: a UNet conditioned on the upsampled
input by channel concatenation; `noisecraft train --cond superres`) gets cond={"low_res": y} on every call,
under either consistency method or with none ("none": SR3 as published).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from noisecraft.diffusion import NoiseSchedule, eps_from_x0
from noisecraft.errors import NoisecraftError
from noisecraft.models import check_pixel_space
from noisecraft.samplers import guided_denoiser, model_defaults, plan
from noisecraft.samplers.common import make_noise, weights_cast_once
from noisecraft.tasks.common import ancestral_with_known, box_down, box_up, check_images


def project_box(x0: torch.Tensor, y: torch.Tensor, factor: int, clip: bool, iterations: int = 40) -> torch.Tensor:
    """The point nearest x0 of {x : box_down(x) = y}, and with clip also in [-1, 1]. Without clip it is
    x0 + up(y - down(x0)). With clip the constraints split into one per block, {mean = y, -1 <= x <= 1},
    whose projection is clamp(x + c) with one shift c per block (the KKT conditions); the mean of
    clamp(x + c) grows with c, so c is found by bisection."""
    if not clip:
        return x0 + box_up(y - box_down(x0, factor), factor)
    blocks = F.max_pool2d(x0, factor), -F.max_pool2d(-x0, factor)                 # per-block max and min
    lo, hi = -1 - blocks[0], 1 - blocks[1]                                          # all -1 at lo, all 1 at hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        low_mean = box_down((x0 + box_up(mid, factor)).clamp(-1, 1), factor) < y
        lo, hi = torch.where(low_mean, mid, lo), torch.where(low_mean, hi, mid)
    return (x0 + box_up((lo + hi) / 2, factor)).clamp(-1, 1)


def _project(model, y, factor, schedule, prediction, *, sampler, steps, spacing, eta, noise, cond,
             guidance_scale, negative_cond, callback, clip_denoised):
    p = plan(model, schedule, sampler, steps, spacing, eta)
    inner = guided_denoiser(model, schedule, prediction, cond, guidance_scale, negative_cond, clip_denoised=False)

    def denoise(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        x0, _ = inner(x, t)
        x0 = project_box(x0, y, factor, clip_denoised)
        return x0, eps_from_x0(x, x0, schedule.alpha_bar(float(t)).to(x))

    return p.fn(denoise, noise().double(), p.grid, schedule, noise=noise, eta=p.eta, callback=callback, **p.options)


def _ilvr(model, y, factor, schedule, prediction, *, sampler, steps, spacing, eta, noise, cond,
          guidance_scale, negative_cond, callback, clip_denoised):
    if sampler != "ddpm":
        raise NoisecraftError(f"ILVR runs DDPM's ancestral steps: use the ddpm sampler, not {sampler!r}")
    p = plan(model, schedule, sampler, steps, spacing)
    denoise = guided_denoiser(model, schedule, prediction, cond, guidance_scale, negative_cond, clip_denoised)
    low_pass = lambda d: box_up(box_down(d, factor), factor)
    return ancestral_with_known(denoise, noise().double(), p.grid, schedule, box_up(y, factor), low_pass, noise,
                                callback=callback)


def _plain(model, y, factor, schedule, prediction, *, sampler, steps, spacing, eta, noise, cond,
           guidance_scale, negative_cond, callback, clip_denoised):
    p = plan(model, schedule, sampler, steps, spacing, eta)
    denoise = guided_denoiser(model, schedule, prediction, cond, guidance_scale, negative_cond, clip_denoised)
    return p.fn(denoise, noise().double(), p.grid, schedule, noise=noise, eta=p.eta, callback=callback, **p.options)


METHODS: dict[str, Callable] = {"project": _project, "ilvr": _ilvr, "none": _plain}


def upscale(
    model,
    low_res: torch.Tensor,
    factor: int | None = None,
    *,
    method: str = "project",
    schedule: NoiseSchedule | None = None,
    sampler: str = "ddpm",
    steps: int | None = 100,
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
    """Upsample `low_res` (B, C, h, w) in [-1, 1] by `factor` (default: the model's image size / h) to the
    model's size. `method` is "project" (any sampler), "ilvr" (ddpm only) or "none" (a super-resolution
    model's own conditional samples); the other arguments are sample()'s. Returns (B, C, h * factor, w * factor)
    float32."""
    low_res = check_images(low_res, "low_res")
    check_pixel_space(model, "upscaling")
    if method not in METHODS:
        raise NoisecraftError(f"unknown super-resolution method {method!r}: use one of {', '.join(METHODS)}")
    schedule, prediction = model_defaults(model, schedule, prediction)
    config = getattr(model, "config", None)
    size = config.unet.image_size if config is not None else None
    b, c, h, w = low_res.shape
    if factor is None:
        if size is None or size % h:
            raise NoisecraftError(f"cannot infer the factor: give it (the model makes {size}x{size} images, "
                                  f"the input is {h}x{w})")
        factor = size // h
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise NoisecraftError(f"the upscaling factor must be a whole number >= 2, got {factor!r}")
    trained = getattr(config, "sr_factor", 0)
    if trained:
        if factor != trained:
            raise NoisecraftError(f"this super-resolution model upsamples x{trained}, not x{factor}: give it "
                                  f"{size // trained}x{size // trained} images")
        cond = {**(cond or {}), "low_res": low_res.to(torch.float32)}
    elif method == "none":
        raise NoisecraftError("method 'none' leaves consistency to a super-resolution model (train --cond superres); "
                              "with this model use 'project' or 'ilvr'")
    if config is not None and ((h * factor, w * factor) != (size, size) or c != config.unet.in_channels):
        raise NoisecraftError(f"the model makes {config.unet.in_channels}x{size}x{size} images: a x{factor} input must be "
                              f"{config.unet.in_channels}x{size // factor}x{size // factor}, got {c}x{h}x{w}")
    noise = make_noise((b, c, h * factor, w * factor), generator, low_res.device)
    with torch.inference_mode(), weights_cast_once(model):
        x = METHODS[method](model, low_res.double(), factor, schedule, prediction, sampler=sampler, steps=steps,
                            spacing=spacing, eta=eta, noise=noise, cond=cond, guidance_scale=guidance_scale,
                            negative_cond=negative_cond, callback=callback, clip_denoised=clip_denoised)
    return x.float()
