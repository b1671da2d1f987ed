"""sampler="auto": the best measured sampler and grid for a budget of model calls.

The table comes from benchmarks/samplers.py (docs/benchmarks.md, "Samplers"): on the image-like
Gaussian mixture, for each budget, the fixed-grid configuration with the lowest excess Frechet
distance. When the model carries a grid tuned for that sampler and budget (grids.json, written by
`noisecraft tune`), auto uses it, since a tuned grid was better than every fixed grid measured.
"""
from __future__ import annotations

from noisecraft.errors import NoisecraftError

DEFAULT_STEPS = 10
# (largest budget it covers, sampler, spacing); every entry makes one model call per step.
AUTO: list[tuple[int, str, str]] = [
    (4, "unipc", "logsnr"),
    (1000, "unipc", "logsnr"),
]


def choose(steps: int | None, grids: dict | None) -> tuple[str, int, str]:
    """(sampler, steps, spacing) for a budget of `steps` model calls (default 10)."""
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise NoisecraftError(f"steps must be a whole number >= 1, got {steps!r}")
    sampler, spacing = next(((s, sp) for top, s, sp in AUTO if steps <= top), AUTO[-1][1:])
    if str(steps) in (grids or {}).get(sampler, {}):
        spacing = "tuned"
    return sampler, steps, spacing
