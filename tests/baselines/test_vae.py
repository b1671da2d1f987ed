import math

import pytest
import torch

from noisecraft import NoisecraftError
from noisecraft.baselines.vae import PRESETS, VAE, VAEConfig, gaussian_kl
from noisecraft.data import load_dataset


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


def test_spatial_latent_shapes_bound_and_per_image_samples():
    assert PRESETS["tiny-spatial"].latent_shape == (4, 4, 4) and PRESETS["base"].latent_shape == (4, 16, 16)
    assert PRESETS["base"].image_shape == (3, 64, 64)
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_channels=4, beta=1.0)).eval()       # 16x16 grey, two stages -> (4, 4, 4)
    x = load_dataset("digits", image_size=16, channels=1).images[:6]
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (6, 4, 4, 4) and model.decode(mu).shape == x.shape
    bpd = model.bits_per_dim(x, torch.Generator().manual_seed(3))
    loss = model.loss(x, torch.Generator().manual_seed(3))
    assert bpd.shape == (6,) and (bpd > 0).all()
    assert float(bpd.mean()) == pytest.approx(loss.item() / math.log(2), rel=1e-5)
    s = model.sample(3, [torch.Generator().manual_seed(k) for k in (1, 2, 3)])
    assert s.shape == (3, 1, 16, 16) and s.min() >= -1 and s.max() <= 1
    assert torch.allclose(model.sample(1, [torch.Generator().manual_seed(2)])[0], s[1], atol=1e-5)


def test_vector_latent_layout_is_unchanged():
    """The vector-latent presets keep their Linear heads, so model directories written before spatial latents
    existed (models/digits-vae) still load."""
    state = VAE(PRESETS["tiny"]).state_dict()
    assert state["encoder.7.weight"].shape == (8, 128 * 4 * 4) and state["project.weight"].shape == (128 * 4 * 4, 4)
    spatial = VAE(PRESETS["tiny-spatial"]).state_dict()
    assert spatial["encoder.6.weight"].shape == (8, 64, 3, 3) and spatial["project.weight"].shape == (64, 4, 3, 3)
    with pytest.raises(NoisecraftError, match="latent_channels"):
        VAEConfig(latent_channels=-1)
