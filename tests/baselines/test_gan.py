import math

import pytest
import torch
import torch.nn.functional as F

from noisecraft import NoisecraftError
from noisecraft.baselines.gan import PRESETS, Discriminator, GANConfig, Generator, discriminator_loss, generator_loss


def test_hinge_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # relu(1 - 2) = 0, relu(1 - 0.5) = 0.5 -> 0.25; relu(1 - 3) = 0, relu(1 + 0) = 1 -> 0.5
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.75)
    assert generator_loss(fake, "hinge").item() == pytest.approx(1.5)
    confident = discriminator_loss(torch.tensor([5.0]), torch.tensor([-5.0]), "hinge")
    assert confident.item() == 0                                # beyond the margin nothing is left to learn


def test_non_saturating_losses_on_known_logits():
    real, fake = torch.tensor([0.0]), torch.tensor([0.0])
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(2 * math.log(2))
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(math.log(2))
    # the D loss is binary cross-entropy with labels 1 for real, 0 for fake
    r, f = torch.tensor([1.3, -0.4]), torch.tensor([0.8, -2.0])
    bce = F.binary_cross_entropy_with_logits(r, torch.ones(2)) + F.binary_cross_entropy_with_logits(f, torch.zeros(2))
    assert discriminator_loss(r, f, "non_saturating").item() == pytest.approx(bce.item())


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_gradient_signs(kind):
    """D is pushed to raise its logit on real images and lower it on fakes; G to raise it on fakes,
    with a gradient that does not vanish where D rejects the fake confidently (non-saturating)."""
    real, fake = torch.zeros(4, requires_grad=True), torch.full((4,), -4.0, requires_grad=True)
    discriminator_loss(real, fake.detach(), kind).backward()
    assert (real.grad < 0).all()
    fake_d = torch.zeros(4, requires_grad=True)
    discriminator_loss(torch.zeros(4), fake_d, kind).backward()
    assert (fake_d.grad > 0).all()
    generator_loss(fake, kind).backward()
    assert (fake.grad < -0.01 / 4).all()


def test_shapes_range_and_per_image_generators():
    torch.manual_seed(0)
    for name in ("tiny", "mnist"):
        config = PRESETS[name]
        g, d = Generator(config).eval(), Discriminator(config)
        x = g.sample(3, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
        assert x.shape == (3, *config.image_shape) and x.min() >= -1 and x.max() <= 1
        assert torch.allclose(g.sample(1, [torch.Generator().manual_seed(2)])[0], x[1], atol=1e-5)
        assert d(x).shape == (3,)


def test_discriminator_layers_are_spectrally_normalized():
    torch.manual_seed(0)
    d = Discriminator(PRESETS["tiny"])
    for _ in range(30):                                        # power iterations run in train-mode forwards
        d(torch.randn(2, 1, 16, 16))
    d.eval()
    for module in d.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            sigma = torch.linalg.matrix_norm(module.weight.flatten(1), ord=2)
            assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_config_errors():
    with pytest.raises(NoisecraftError, match="hinge or non_saturating"):
        GANConfig(loss="wasserstein")
    with pytest.raises(NoisecraftError, match="divisible by 4"):
        GANConfig(image_size=18)
