import math

import pytest
import torch

from noisecraft import NoisecraftError
from noisecraft.baselines.common import dequantize
from noisecraft.baselines.vae import PRESETS, VAE, VAEConfig, discretized_gaussian_log_likelihood, gaussian_kl
from noisecraft.data import load_dataset


@pytest.mark.parametrize("levels", [4, 256])
def test_discretized_gaussian_is_a_distribution_over_the_grid(levels):
    """The bins' probabilities sum to 1 for any mean and scale, tails and tiny scales included."""
    grid = dequantize(torch.arange(levels), levels)[:, None]         # (L, 1)
    mean = torch.tensor([-1.3, -0.2, 0.0, 0.7, 1.5, 0.33])
    log_scale = torch.log(torch.tensor([0.5, 0.05, 1.0, 0.01, 2.0, 1e-3]))
    p = discretized_gaussian_log_likelihood(grid, mean, log_scale, levels).exp()   # (L, 6)
    assert torch.allclose(p.sum(0), torch.ones(6), atol=1e-4)


def test_tiny_scale_keeps_a_gradient_for_a_far_mean():
    mean = torch.tensor([0.9], requires_grad=True)
    discretized_gaussian_log_likelihood(torch.tensor([0.0]), mean, torch.tensor([math.log(1e-3)]), 256).backward()
    assert mean.grad.item() < 0                                      # pulled towards x


def test_kl_is_zero_at_the_prior_and_matches_the_closed_form():
    assert gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[math.log(4.0), 0.0]])
    expected = 0.5 * ((1 + 4 - 1 - math.log(4)) + (4 + 1 - 1 - 0))
    assert gaussian_kl(mu, logvar).item() == pytest.approx(expected)


def test_bits_per_dim_is_the_beta_one_loss_in_bits():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    model = VAE(VAEConfig(beta=1.0))
    bpd = model.bits_per_dim(x, torch.Generator().manual_seed(3))
    loss = model.loss(x, torch.Generator().manual_seed(3))
    assert bpd.shape == (4,) and (bpd > 0).all()
    assert float(bpd.mean()) == pytest.approx(loss.item() / math.log(2), rel=1e-5)


def test_elbo_improves_in_a_few_steps_on_digits():
    torch.manual_seed(0)
    x = load_dataset("digits", image_size=16, channels=1).images[:256]
    model = VAE(PRESETS["tiny"])
    g = torch.Generator().manual_seed(0)
    before = float(model.bits_per_dim(x, g).mean())
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    for i in range(60):
        opt.zero_grad()
        model.loss(x[(i % 4) * 64:(i % 4 + 1) * 64], g).backward()
        opt.step()
    after = float(model.bits_per_dim(x, g).mean())
    assert after < before - 0.7                                     # 6.7 -> 5.7 bits measured


def test_sample_shape_range_and_per_image_generators():
    torch.manual_seed(0)
    for name, shape in (("tiny", (1, 16, 16)), ("mnist", (1, 28, 28))):
        model = VAE(PRESETS[name]).eval()
        x = model.sample(3, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
        assert x.shape == (3, *shape) and x.min() >= -1 and x.max() <= 1
        assert torch.allclose(model.sample(1, [torch.Generator().manual_seed(2)])[0], x[1], atol=1e-5)


def test_config_errors():
    with pytest.raises(NoisecraftError, match="divisible"):
        VAEConfig(image_size=18)
    with pytest.raises(NoisecraftError, match="beta"):
        VAEConfig(beta=-1)
