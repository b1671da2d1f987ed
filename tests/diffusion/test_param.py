import pytest
import torch
from diffusers import DDPMScheduler

from noisecraft import NoisecraftError
from noisecraft.diffusion import NoiseSchedule, PREDICTIONS, q_sample, target, to_x0_eps


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_parameterization_recovers_x0_and_eps(prediction):
    s = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    xt = q_sample(s, x0, t, eps)
    a = s.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    x0_hat, eps_hat = to_x0_eps(target(prediction, x0, eps, a), xt, a, prediction)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)  # eps -> x0 divides by sqrt(alpha_bar) ~ 6e-3 at t=999
    torch.testing.assert_close(eps_hat, eps, atol=1e-3, rtol=1e-3)


def test_v_target_equals_diffusers_velocity():
    ref = DDPMScheduler()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([5, 300, 900])
    a = NoiseSchedule.linear().alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(target("v_prediction", x0, eps, a), ref.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-6)


def test_unknown_prediction_is_a_clear_error():
    with pytest.raises(NoisecraftError, match="epsilon"):
        to_x0_eps(torch.zeros(1), torch.zeros(1), torch.ones(1) * 0.5, "score")
