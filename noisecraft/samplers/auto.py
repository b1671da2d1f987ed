"""sampler="auto": the best measured sampler and grid for a budget of model calls.

How the table was chosen (numbers in docs/benchmarks.md):
  - on the shipped digits model at 10 calls, 500 samples judged by the digits classifier:
    unipc/trailing 88.2% confident, dpmpp_2m/trailing 88.4%, ddim/trailing 84.0%,
    unipc/logsnr 83.0%, dpmpp_2m/logsnr 81.6%: UniPC and DPM++ 2M tie, the grid matters more,
    and a grid tuned by `noisecraft tune` scored lower (85.2%) although it follows the ODE more closely;
  - on the image-like Gaussian mixture (benchmarks/samplers.py) UniPC is the best fixed-grid sampler
    at 5, 8 and 10 calls (trailing at 5, logsnr at 8 and 10, where all good configurations are
    within 0.01 excess FD of each other) and a tuned UniPC grid is the best configuration at every budget.
  So auto is UniPC on the trailing grid, the choice that holds on the real model; when the model
  carries a grid tuned for that sampler and budget (grids.json, `noisecraft tune`), auto uses it.
"""
from __future__ import annotations

from noisecraft.errors import NoisecraftError

DEFAULT_STEPS = 10
# (largest budget it covers, sampler, spacing); every entry makes one model call per step.
AUTO: list[tuple[int, str, str]] = [
    (1000, "unipc", "trailing"),
]


def choose(steps: int | None, grids: dict | None) -> tuple[str, int, str]:
    """(sampler, steps, spacing) for a budget of `steps` model calls (default 10)."""
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise NoisecraftError(f"steps must be a whole number, got {steps!r}")
    sampler, spacing = next(((s, sp) for top, s, sp in AUTO if steps <= top), AUTO[-1][1:])
    if str(steps) in (grids or {}).get(sampler, {}):
        spacing = "tuned"
    return sampler, steps, spacing
