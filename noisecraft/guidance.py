"""Classifier-free guidance (Ho & Salimans 2021): eps = eps_uncond + w (eps_cond - eps_uncond),
with the conditional and unconditional passes batched into one forward call."""
from __future__ import annotations

import torch

from noisecraft.errors import NoisecraftError


def guided(model, cond: dict, scale: float):
    """Wrap `model` so that calling it with (x, t) returns the guided prediction for `cond`.
    The model supplies its "no condition" through `model.null_cond(cond)`."""
    if not cond:
        raise NoisecraftError("guidance needs a condition: pass a class or a prompt, or set guidance to 1")
    null_cond = getattr(model, "null_cond", None)
    if null_cond is None:
        raise NoisecraftError("this model has no unconditional mode, so guidance cannot be used: set guidance to 1")
    uncond = null_cond(cond)
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}

    def forward(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return forward
