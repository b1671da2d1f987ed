"""What the image-to-image tasks share: box resampling, and the ancestral loop that writes a known part
of the image back into x_t.

The tasks build on the sampler protocol of noisecraft.samplers.common: `denoise(x_t, t) -> (x0_hat, eps_hat)`."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from noisecraft.diffusion import NoiseSchedule, posterior_between
from noisecraft.errors import NoisecraftError
from noisecraft.samplers.common import alpha_bar_grid


def check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or min(images.shape) < 1:
        raise NoisecraftError(f"{what} must be a (batch, channels, height, width) tensor in [-1, 1]")
    return images


def box_down(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The mean of each factor x factor block: (B, C, H, W) -> (B, C, H/f, W/f)."""
    return F.avg_pool2d(x, factor)


def box_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Each pixel repeated into a factor x factor block; box_down(box_up(y)) == y, and box_up(box_down(.))
    is the orthogonal projection onto block-constant images."""
    return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def ancestral_with_known(denoise, x: torch.Tensor, timesteps: torch.Tensor, schedule: NoiseSchedule,
                         known: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor], noise,
                         path: Sequence[int] | None = None, callback: Callable | None = None) -> torch.Tensor:
    """DDPM ancestral steps on `timesteps` in which, after each step to x_s, the part of x_s that
    `project` (a linear projection) selects is replaced by that part of the forward-noised `known`
    image q(x_s | known): x_s <- x_s + P(sqrt(a_s) known + sqrt(1 - a_s) z - x_s).
    P = a mask of the known pixels is RePaint (Lugmayr et al. 2022, Alg. 1, line 8); P = box
    up(down(.)) is ILVR (Choi et al. 2021, eq. 8).

    `path` lists grid positions to visit (0 = timesteps[0], len(timesteps) = clean); a step to
    position + 1 is a reverse step (one model call), a step back up is RePaint's resampling jump,
    x_hi ~ q(x_hi | x_lo) = N(sqrt(a_hi / a_lo) x_lo, (1 - a_hi / a_lo) I). Default: straight down."""
    n = len(timesteps)
    path = list(range(n + 1)) if path is None else list(path)
    ab = alpha_bar_grid(schedule, timesteps)                          # (n + 1,), ab[n] = 1
    ts = timesteps.tolist()
    known = known.to(x)
    pos, i = path[0], 0
    for nxt in path[1:]:
        if nxt == pos + 1:
            x0, _ = denoise(x, ts[pos])
            mean, var = posterior_between(ab[pos], ab[nxt], x0, x)      # DDPM eqs. 6-7 with x0_hat
            a = float(ab[nxt])
            if nxt < n:
                x = mean + var.sqrt() * noise()
                target = a ** 0.5 * known + (1 - a) ** 0.5 * noise()
            else:
                x, target = mean, known
            x = x + project(target - x)
            if callback is not None:
                callback(i, x, x0)
            i += 1
        elif nxt < pos:
            r = float(ab[nxt] / ab[pos])
            x = r ** 0.5 * x + (1 - r) ** 0.5 * noise()
        else:
            raise NoisecraftError(f"a path moves down one position at a time or jumps back up, got {pos} -> {nxt}")
        pos = nxt
    return x
