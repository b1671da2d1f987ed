"""Each deterministic solver converges to the exact ODE solution at its expected order: with the
exact denoiser of Gaussian data the endpoint is known in closed form, so the error is the solver's own."""
import math

import pytest
import torch

from noisecraft import NoiseSchedule, sample
from tests.analytic import GaussianData, GaussianEpsModel, exact_ode_endpoint

SCHEDULE = NoiseSchedule.linear()
DATA = GaussianData(seed=3)


def error(sampler: str, steps: int, x_T: torch.Tensor, exact: torch.Tensor) -> float:
    x = sample(GaussianEpsModel(DATA, SCHEDULE), x_T.shape, schedule=SCHEDULE, sampler=sampler, steps=steps,
               spacing="logsnr", x_T=x_T, clip_denoised=False)
    return float((x.double() - exact).pow(2).mean().sqrt())


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("dpmpp_3m", 3),
                                            ("unipc", 3), ("unipc_bh1", 3)])
def test_error_falls_at_the_expected_order(sampler, order):
    x_T = torch.randn(256, *DATA.shape, generator=torch.Generator().manual_seed(0))
    exact = exact_ode_endpoint(x_T, DATA, float(SCHEDULE.sigmas[-1]))
    errs = [error(sampler, n, x_T, exact) for n in (10, 20, 40)]
    observed = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert errs[2] < errs[1] < errs[0]
    assert observed[-1] > order - 0.35, (errs, observed)
