import torch

from noisecraft import NoiseSchedule
from noisecraft.diffusion import posterior_between, q_posterior, q_sample, q_step


def test_q_sample_matches_t_applications_of_q_step():
    """Closed form (eq. 4) against the Markov chain (eq. 2) run t times, by moments."""
    s = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    n = 40000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    for t in (0, 99, 400):
        x = x0.clone()
        for k in range(t + 1):
            x = q_step(s, x, torch.full((n,), k), torch.randn(x.shape, generator=g, dtype=torch.float64))
        closed = q_sample(s, x0, torch.full((n,), float(t)), torch.randn(x0.shape, generator=g, dtype=torch.float64))
        ab = float(s.alphas_cumprod[t])
        for samples in (x, closed):
            assert abs(float(samples.mean()) - ab ** 0.5 * 0.7) < 4 * (1 - ab) ** 0.5 / n ** 0.5 + 1e-4
            assert abs(float(samples.var()) - (1 - ab)) < 0.03 * (1 - ab) + 1e-5


def test_posterior_matches_ddpm_equation_7_and_bayes_rule():
    s = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([1, 250, 999])
    mean, var = q_posterior(s, x0, xt, t)
    ab, ab_prev, beta = s.alphas_cumprod[t], s.alphas_cumprod_prev[t], s.betas[t]
    c = lambda v: v.float().reshape(-1, 1, 1, 1)
    # DDPM eq. 7, as printed
    torch.testing.assert_close(mean, c(ab_prev.sqrt() * beta / (1 - ab)) * x0 + c((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * xt)
    torch.testing.assert_close(var, c((1 - ab_prev) / (1 - ab) * beta))
    # Bayes: q(x_{t-1}|x_t,x_0) ~ q(x_t|x_{t-1}) q(x_{t-1}|x_0), a product of two Gaussians
    precision = (1 - beta) / beta + 1 / (1 - ab_prev)
    bayes_mean = (c((1 - beta).sqrt() / beta) * xt + c(ab_prev.sqrt() / (1 - ab_prev)) * x0) / c(precision)
    torch.testing.assert_close(mean, bayes_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var, c(1 / precision), rtol=1e-4, atol=1e-7)


def test_posterior_at_first_step_returns_x0():
    s = NoiseSchedule.linear()
    x0, xt = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    mean, var = q_posterior(s, x0, xt, torch.tensor([0, 0]))
    torch.testing.assert_close(mean, x0)
    assert float(var.abs().max()) == 0.0


def test_respaced_posterior_reduces_to_one_step_posterior():
    s = NoiseSchedule.cosine()
    x0, xt = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3)
    t = torch.tensor([321])
    m1, v1 = q_posterior(s, x0, xt, t)
    m2, v2 = posterior_between(s.alphas_cumprod[t], s.alphas_cumprod[t - 1], x0, xt)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(v1, v2)
