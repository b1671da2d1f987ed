"""The analytic data sets behind the sampler tests and benchmark: their denoiser must be exact."""
import torch
from torch.distributions import MultivariateNormal

from noisecraft import NoiseSchedule
from noisecraft.eval.analytic import AnalyticEpsModel, GaussianMixture, frechet_distance


def test_one_component_is_the_gaussian_closed_form():
    """eps_hat = sqrt(1 - a) C^{-1} (x_t - sqrt(a) mu), C = a Sigma + (1 - a) I: the optimal predictor for N(mu, Sigma)."""
    s = NoiseSchedule.linear()
    data = GaussianMixture.gaussian()
    mu, sigma = data.moments()
    x = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 3.5, 100.0, 500.0, 800.0, 999.0])
    a = s.alpha_bar(t).reshape(6, 1, 1)
    cov = a * sigma + (1 - a) * torch.eye(4, dtype=torch.float64)                  # (6, 4, 4)
    expected = (1 - a[:, 0]) ** 0.5 * torch.linalg.solve(cov, x.reshape(6, 4) - a[:, 0] ** 0.5 * mu)
    ours = AnalyticEpsModel(data, s)(x, t)
    torch.testing.assert_close(ours, expected.reshape(x.shape), rtol=0, atol=1e-10)


def test_mixture_denoiser_is_tweedie_on_the_noisy_density():
    """E[x_0 | x] = x + sigma^2 grad log p_sigma(x), with p_sigma the mixture convolved with N(0, sigma^2 I)."""
    data = GaussianMixture.image_like(shape=(1, 2, 3), k=3, seed=1)
    x = torch.randn(5, 1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for sigma in (0.05, 0.3, 2.0):
        cov = data.U @ torch.diag_embed(data.lam + sigma ** 2) @ data.U.transpose(1, 2)
        logp = torch.stack([MultivariateNormal(data.mu[k], cov[k]).log_prob(x.flatten(1)) for k in range(3)], 1)
        (grad,) = torch.autograd.grad((logp + data.pi.log()).logsumexp(1).sum(), x)
        torch.testing.assert_close(data.denoise(x.detach(), torch.tensor(sigma)), x.detach() + sigma ** 2 * grad,
                                   rtol=0, atol=1e-6)   # float64 Cholesky vs eigenbasis: 2e-7 apart at worst seen


def test_exact_samples_have_the_true_moments_and_mode_weights():
    data = GaussianMixture.image_like()
    x, k = data.sample(40000, torch.Generator().manual_seed(0))
    mean, cov = data.moments()
    assert frechet_distance(x, mean, cov) < 0.01
    assert (data.mode_weights(x) - data.pi).abs().max() < 0.01
    assert (data.mode_weights(x) - torch.bincount(k, minlength=8) / len(k)).abs().max() < 0.002


def test_frechet_distance_of_diagonal_gaussians():
    """For diagonal covariances FD = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2; samples chosen with exact moments."""
    z = torch.randn(5000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = (z - z.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T          # mean 0, cov I exactly
    x = z * torch.tensor([1.0, 2.0, 0.5]).double() + torch.tensor([1.0, 0.0, -1.0]).double()
    mean, cov = torch.zeros(3, dtype=torch.float64), torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))
    expected = 1 + 0 + 1 + (1 - 2) ** 2 + (2 - 1) ** 2 + (0.5 - 1) ** 2
    assert abs(frechet_distance(x, mean, cov) - expected) < 1e-9
