"""Analytic models: for Gaussian data x_0 ~ N(mu, Sigma) the optimal noise predictor is
E[eps | x_t] = sqrt(1 - a) C^{-1} (x_t - sqrt(a) mu),  C = a Sigma + (1 - a) I,  a = alpha_bar_t,
so a sampler's own error can be measured with no training."""
from __future__ import annotations

import torch

from noisecraft import NoiseSchedule


class GaussianData:
    def __init__(self, shape=(1, 2, 2), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        d = int(torch.tensor(shape).prod())
        self.shape, self.d = tuple(shape), d
        self.mu = (torch.rand(d, generator=g, dtype=torch.float64) - 0.5)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        self.sigma = q @ torch.diag(torch.linspace(0.02, 0.3, d, dtype=torch.float64)) @ q.T


class GaussianEpsModel:
    """The model protocol: model(x_t, t) -> eps_hat, exact for GaussianData."""

    def __init__(self, data: GaussianData, schedule: NoiseSchedule):
        self.data, self.schedule, self.calls = data, schedule, 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        self.calls += 1
        b = x_t.shape[0]
        a = self.schedule.alpha_bar(t.cpu()).reshape(b, 1, 1)               # (B, 1, 1) float64
        eye = torch.eye(self.data.d, dtype=torch.float64)
        cov = a * self.data.sigma + (1 - a) * eye                          # (B, d, d)
        x = x_t.reshape(b, -1).double() - a[:, 0] ** 0.5 * self.data.mu   # (B, d)
        eps = (1 - a[:, 0]) ** 0.5 * torch.linalg.solve(cov, x.unsqueeze(-1)).squeeze(-1)
        return eps.to(x_t.dtype).reshape(x_t.shape)


def frechet_to_truth(samples: torch.Tensor, data: GaussianData) -> tuple[float, float]:
    """(|mean error|, relative Frobenius covariance error) of samples against the true Gaussian."""
    x = samples.reshape(len(samples), -1).double()
    mean_err = float((x.mean(0) - data.mu).norm())
    cov_err = float((torch.cov(x.T) - data.sigma).norm() / data.sigma.norm())
    return mean_err, cov_err


def exact_ode_endpoint(x_T: torch.Tensor, data: GaussianData, sigma_max: float) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T (VP, at sigma_max) for Gaussian data: in the eigenbasis
    of Sigma each coordinate of x - mu shrinks by sqrt(lambda / (lambda + sigma_max^2)) (float64)."""
    lam, U = torch.linalg.eigh(data.sigma)
    x_ve = x_T.reshape(len(x_T), -1).double() * (1 + sigma_max ** 2) ** 0.5 - data.mu
    z = x_ve @ U * (lam / (lam + sigma_max ** 2)).sqrt()
    return (z @ U.T + data.mu).reshape(x_T.shape)
