"""sampler="auto": the best measured sampler and grid for a budget of model calls.

How the table was chosen (numbers in docs/benchmarks.md):
  - on the image-like Gaussian mixture (benchmarks/samplers.py) the learned sampler (coefficients and grid
    fitted to the model, `noisecraft tune --sampler learned`) has the lowest error at 5, 8, 10 and 20 calls;
    among fixed grids UniPC is best at 5, 8 and 10 calls (trailing at 5, logsnr at 8 and 10);
  - on the shipped digits model, 500 samples per configuration judged by the digits classifier:
      5 calls:  learned 85.0% confident, unipc/trailing 83.6%, dpmpp_2m/trailing 82.6%, unipc/logsnr 78.6%;
      10 calls: unipc/trailing 88.2%, dpmpp_2m/trailing 88.4%, learned 86.6%, ddim/trailing 84.0%,
                unipc/logsnr 83.0%; a UniPC grid tuned by `noisecraft tune` 85.2%;
      20 calls: unipc/trailing 88.4%, dpmpp_2m/trailing 87.6%, unipc/logsnr 85.8%.
    Following the exact ODE more closely stops paying off on a trained model somewhere between 5 and
    10 calls, where the solver's own error is no longer the largest one.
So auto is the learned sampler up to 8 calls when the model carries coefficients for that budget, and
UniPC on the trailing grid otherwise; when the model carries a UniPC grid tuned for the budget
(grids.json), auto uses that grid.
"""
from __future__ import annotations

from noisecraft.errors import NoisecraftError

DEFAULT_STEPS = 10
# (largest budget it covers, [(sampler, spacing), ...] in order of preference); "learned" and
# spacing "tuned" need a fit saved with the model, and are skipped when there is none for the budget.
# Every entry makes one model call per step.
AUTO: list[tuple[int, list[tuple[str, str]]]] = [
    (8, [("learned", "tuned"), ("unipc", "trailing")]),
    (1000, [("unipc", "trailing")]),
]


def choose(steps: int | None, grids: dict | None) -> tuple[str, int, str]:
    """(sampler, steps, spacing) for a budget of `steps` model calls (default 10)."""
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise NoisecraftError(f"steps must be a whole number, got {steps!r}")
    fitted = lambda sampler: str(steps) in (grids or {}).get(sampler, {})
    choices = next((c for top, c in AUTO if steps <= top), AUTO[-1][1])
    sampler, spacing = next((s, sp) for s, sp in choices if sp != "tuned" or fitted(s))
    if fitted(sampler):
        spacing = "tuned"
    return sampler, steps, spacing
