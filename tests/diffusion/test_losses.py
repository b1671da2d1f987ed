import pytest
import torch

from noisecraft.diffusion import NoiseSchedule, PREDICTIONS, diffusion_loss, min_snr_weight, target


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_perfect_prediction_has_zero_loss_and_noise_has_positive(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    ab = NoiseSchedule.linear().alphas_cumprod[torch.arange(0, 800, 100)].float()
    perfect = target(prediction, x0, eps, ab.reshape(-1, 1, 1, 1))
    assert float(diffusion_loss(perfect, x0, eps, ab, prediction)) == pytest.approx(0.0, abs=1e-12)
    assert float(diffusion_loss(perfect + 0.1, x0, eps, ab, prediction)) == pytest.approx(0.01, rel=1e-4)


def test_min_snr_weights_equal_hang_et_al():
    """Weights as in diffusers' train_text_to_image: min(snr, g)/snr for eps, /(snr+1) for v."""
    snr = torch.tensor([0.01, 1.0, 5.0, 100.0])
    gamma = 5.0
    clipped = torch.stack([snr, gamma * torch.ones_like(snr)], 1).min(1).values
    torch.testing.assert_close(min_snr_weight(snr, gamma, "epsilon"), clipped / snr)
    torch.testing.assert_close(min_snr_weight(snr, gamma, "v_prediction"), clipped / (snr + 1))
    torch.testing.assert_close(min_snr_weight(snr, gamma, "sample"), clipped)


def test_min_snr_weighting_changes_the_loss_per_sample():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    ab = torch.tensor([0.999, 0.5])  # SNR 999 (down-weighted to 5/999) and 1 (weight 1)
    out = eps + 1.0
    loss = float(diffusion_loss(out, x0, eps, ab, "epsilon", min_snr_gamma=5.0))
    assert loss == pytest.approx((5 / 999 + 1) / 2, rel=1e-3)
