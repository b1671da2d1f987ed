"""Classifier-free guidance (Ho & Salimans 2021): eps = eps_uncond + w (eps_cond - eps_uncond),
with the conditional and unconditional passes batched into one forward call. A negative prompt takes
the place of the unconditional branch, so sampling moves away from it."""
from __future__ import annotations

import torch

from noisecraft.errors import NoisecraftError


def guided(model, cond: dict, scale: float, negative: dict | None = None):
    """Wrap `model` so that calling it with (x, t) returns the guided prediction for `cond`. The second
    branch is `negative` (a negative prompt) when given, else the model's "no condition", `model.null_cond(cond)`."""
    if not cond:
        raise NoisecraftError("guidance needs a condition: pass a class or a prompt, or set guidance to 1")
    null_cond = getattr(model, "null_cond", None)
    if negative is None and null_cond is None:
        raise NoisecraftError("this model has no unconditional mode, so guidance cannot be used: set guidance to 1")
    uncond = negative if negative is not None else null_cond(cond)
    if set(uncond) != set(cond):
        raise NoisecraftError(f"the negative condition has {sorted(uncond)} but the condition has {sorted(cond)}")
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}

    def forward(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return forward
