import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from noisecraft import NoiseSchedule, NoisecraftError


@pytest.mark.parametrize("kind, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_and_alpha_bar_equal_diffusers(kind, diffusers_name):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    ours = getattr(NoiseSchedule, kind)(1000)
    assert ours.betas.dtype == torch.float64 and ours.betas.shape == (1000,)
    # diffusers builds its schedule in float32; ours is float64.
    torch.testing.assert_close(ours.betas, ref.betas.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_ddpm_defaults():
    s = NoiseSchedule.linear()
    assert len(s) == 1000
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(4.04e-5, rel=0.01)  # nearly pure noise at T


def test_sigma_and_log_snr_views():
    s = NoiseSchedule.cosine()
    ab = s.alphas_cumprod
    torch.testing.assert_close(s.sigmas, ((1 - ab) / ab).sqrt())
    torch.testing.assert_close(s.log_snr, (ab / (1 - ab)).log())
    assert bool((s.sigmas[1:] > s.sigmas[:-1]).all())


def test_integer_t_gives_the_table_and_fraction_interpolates_log_sigma():
    s = NoiseSchedule.linear()
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(s.t_to_sigma(t), s.sigmas)
    mid = s.t_to_sigma(torch.tensor([10.25]))
    expected = (0.75 * s.sigmas[10].log() + 0.25 * s.sigmas[11].log()).exp()
    torch.testing.assert_close(mid, expected.reshape(1))


def test_sigma_to_t_inverts_t_to_sigma():
    s = NoiseSchedule.linear()
    t = torch.tensor([0.0, 0.3, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t)), t)


def test_sigma_to_t_equals_diffusers():
    s = NoiseSchedule.linear()
    ref = EulerDiscreteScheduler(num_train_timesteps=1000)
    log_sigmas = np.log(s.sigmas.numpy())
    sig = np.array([0.02, 0.5, 3.0, 40.0, 150.0])
    expected = np.array([ref._sigma_to_t(np.array(v), log_sigmas) for v in sig])
    np.testing.assert_allclose(s.sigma_to_t(torch.tensor(sig)).numpy(), expected, rtol=1e-10)


def test_alpha_bar_of_clean_data_is_one():
    s = NoiseSchedule.linear()
    assert float(s.alpha_bar(-1.0)) == 1.0
    assert float(s.alpha_bar(0.0)) == pytest.approx(1 - 1e-4)


@pytest.mark.parametrize("bad", [[0.5], [0.1, 1.0], [[0.1, 0.2]]])
def test_bad_betas_are_refused(bad):
    with pytest.raises(NoisecraftError):
        NoiseSchedule(torch.tensor(bad))
