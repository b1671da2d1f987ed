"""Samplers against the truth: with the exact noise predictor for Gaussian data, the samples
must have the data's mean and covariance (up to the sampler's own discretization error)."""
import pytest
import torch

from noisecraft import NoiseSchedule, sample
from tests.analytic import GaussianData, GaussianEpsModel, frechet_to_truth

N = 20000


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("sampler, steps, tol", [("ddpm", 1000, 0.03), ("ddpm_large", 1000, 0.04), ("ddim", 300, 0.04)])
def test_sampler_reproduces_mean_and_covariance(kind, sampler, steps, tol):
    schedule = getattr(NoiseSchedule, kind)()
    data = GaussianData()
    x = sample(GaussianEpsModel(data, schedule), (N, *data.shape), schedule=schedule, sampler=sampler, steps=steps,
               generator=torch.Generator().manual_seed(0), clip_denoised=False)
    mean_err, cov_err = frechet_to_truth(x, data)
    assert mean_err < 0.02
    assert cov_err < tol


def test_deterministic_ddim_error_shrinks_with_more_steps():
    schedule = NoiseSchedule.linear()
    data = GaussianData(seed=1)
    x_T = torch.randn(N, *data.shape, generator=torch.Generator().manual_seed(5))
    errs = []
    for steps in (5, 20, 100):
        x = sample(GaussianEpsModel(data, schedule), x_T.shape, schedule=schedule, sampler="ddim", steps=steps,
                   x_T=x_T, clip_denoised=False)
        errs.append(frechet_to_truth(x, data)[1])
    assert errs[0] > errs[1] > errs[2]
