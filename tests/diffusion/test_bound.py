import math

import pytest
import torch

from noisecraft import NoisecraftError
from noisecraft.diffusion import NoiseSchedule
from noisecraft.diffusion.bound import (bits_per_dim, decoder_variance, discretized_gaussian_log_likelihood,
                                        normal_kl, prior_term)
from noisecraft.eval.analytic import AnalyticEpsModel, GaussianMixture

SCHEDULE = NoiseSchedule.linear()


def two_points(levels_apart: float = 0.5) -> GaussianMixture:
    """One pixel that is -0.5 or +0.5 with probability 1/2 each: -log2 p(x) is exactly 1 bit for either."""
    mu = torch.tensor([[-levels_apart], [levels_apart]], dtype=torch.float64)
    return GaussianMixture((1, 1, 1), torch.tensor([0.5, 0.5], dtype=torch.float64), mu,
                           torch.ones(2, 1, 1, dtype=torch.float64), torch.full((2, 1), 1e-10, dtype=torch.float64))


def test_the_bound_of_the_exact_denoiser_is_close_to_the_true_nll_and_never_below_it():
    """With T = 1000 small steps the Gaussian reverse steps around the exact posterior mean are nearly the true
    reverse process, so the bound is just above the 1 bit the data's entropy costs; on a 5-level grid the
    decoder's bins are wide enough that L_0 adds nothing."""
    data = two_points()
    x = data.sample(512, torch.Generator().manual_seed(0))[0].float()              # (512, 1, 1, 1)
    bits = bits_per_dim(AnalyticEpsModel(data, SCHEDULE), x, SCHEDULE, "epsilon", levels=5)
    assert bits.shape == (512,)
    assert 0.98 < float(bits.mean()) < 1.1


def test_a_worse_model_gets_a_worse_bound():
    data = two_points()
    x = data.sample(256, torch.Generator().manual_seed(0))[0].float()
    exact = float(bits_per_dim(AnalyticEpsModel(data, SCHEDULE), x, SCHEDULE, "epsilon", levels=5, terms=100).mean())
    blind = float(bits_per_dim(lambda x_t, t: torch.zeros_like(x_t), x, SCHEDULE, "sample", levels=5,
                               terms=100).mean())                                  # predicts x_0 = 0 always
    assert blind > exact + 1


def test_stratified_terms_estimate_the_full_sum_without_bias():
    data = GaussianMixture.image_like(shape=(1, 2, 2), k=3, seed=1)
    model = AnalyticEpsModel(data, SCHEDULE)
    x = data.sample(200, torch.Generator().manual_seed(0))[0].clamp(-1, 1).float()
    full = float(bits_per_dim(model, x, SCHEDULE, "epsilon", levels=256).mean())
    estimates = [float(bits_per_dim(model, x, SCHEDULE, "epsilon", levels=256, terms=20,
                                    generator=torch.Generator().manual_seed(s)).mean()) for s in range(1, 9)]
    mean = sum(estimates) / len(estimates)
    spread = (sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1)) ** 0.5
    assert abs(mean - full) < max(3 * spread / len(estimates) ** 0.5, 0.02)
    strata = len(set(torch.logspace(0, 3, 21).round().long().tolist())) - 1     # 19: geometric, duplicates merged
    assert model.calls == SCHEDULE.num_timesteps + 8 * (strata + 1)          # T calls for the sum; K + 1 each


def test_a_perfect_x0_prediction_leaves_only_the_prior_and_decoder_terms():
    """Predicting x_0 exactly zeroes every KL term; what remains is L_T and the discretized decoder at
    sigma_1^2 = beta_tilde_2, both in closed form."""
    levels, value = 256, 2 / 255 * 100 - 1                                          # a point of the grid
    x = torch.full((3, 1, 2, 2), value)
    bits = bits_per_dim(lambda x_t, t: x.clone(), x, SCHEDULE, "sample", levels=levels, terms=5)
    sigma = math.sqrt(float(decoder_variance(SCHEDULE)[0]))
    half = 1 / (levels - 1)
    p_bin = math.erf(half / (sigma * math.sqrt(2)))                                # Phi(h/s) - Phi(-h/s)
    ab = float(SCHEDULE.alphas_cumprod[-1])
    kl_prior = 0.5 * (ab * value ** 2 + (1 - ab) - 1 - math.log(1 - ab))
    expected = (kl_prior - math.log(p_bin)) / math.log(2)
    assert torch.allclose(bits, torch.full((3,), expected), rtol=1e-4)
    assert torch.allclose(prior_term(SCHEDULE, x), torch.full((3,), 4 * kl_prior, dtype=torch.float64), rtol=1e-6)


def test_normal_kl_matches_the_formula_and_is_zero_between_equals():
    m1, v1, m2, v2 = torch.tensor(0.3), torch.tensor(0.5), torch.tensor(-0.2), torch.tensor(2.0)
    expected = math.log(math.sqrt(2.0) / math.sqrt(0.5)) + (0.5 + 0.25) / (2 * 2.0) - 0.5
    assert float(normal_kl(m1, v1, m2, v2)) == pytest.approx(expected)
    assert float(normal_kl(m1, v1, m1, v1)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("levels", [4, 256])
def test_discretized_gaussian_is_a_distribution_over_the_grid(levels):
    """The bins' probabilities sum to 1 for any mean and scale, tails and tiny scales included."""
    grid = torch.linspace(-1, 1, levels)[:, None]                    # (L, 1)
    mean = torch.tensor([-1.3, -0.2, 0.0, 0.7, 1.5, 0.33])
    log_scale = torch.log(torch.tensor([0.5, 0.05, 1.0, 0.01, 2.0, 1e-3]))
    p = discretized_gaussian_log_likelihood(grid, mean, log_scale, levels).exp()   # (L, 6)
    assert torch.allclose(p.sum(0), torch.ones(6), atol=1e-4)


def test_tiny_scale_keeps_a_gradient_for_a_far_mean():
    mean = torch.tensor([0.9], requires_grad=True)
    discretized_gaussian_log_likelihood(torch.tensor([0.0]), mean, torch.tensor([math.log(1e-3)]), 256).backward()
    assert mean.grad.item() < 0                                      # pulled towards x


def test_a_latent_model_is_refused():
    class Latent:
        vae = object()

    with pytest.raises(NoisecraftError, match="latent"):
        bits_per_dim(Latent(), torch.zeros(1, 1, 2, 2), SCHEDULE, "epsilon")
