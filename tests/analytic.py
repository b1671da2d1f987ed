"""Analytic models for sampler tests: for Gaussian data x_0 ~ N(mu, Sigma) the optimal noise predictor is
E[eps | x_t] = sqrt(1 - a) C^{-1} (x_t - sqrt(a) mu),  C = a Sigma + (1 - a) I,  a = alpha_bar_t,
so a sampler's own error can be measured with no training. The data and model are the library's
(noisecraft.eval.analytic, one-component mixture); tests/eval/test_analytic.py checks them against this formula."""
from __future__ import annotations

import torch

from noisecraft.eval.analytic import AnalyticEpsModel as GaussianEpsModel, GaussianMixture


def GaussianData(shape=(1, 2, 2), seed: int = 0) -> GaussianMixture:
    """A Gaussian with a random mean in [-0.5, 0.5] and covariance eigenvalues spread over [0.02, 0.3]."""
    return GaussianMixture.gaussian(shape, seed)


def frechet_to_truth(samples: torch.Tensor, data: GaussianMixture) -> tuple[float, float]:
    """(|mean error|, relative Frobenius covariance error) of samples against the true Gaussian."""
    mean, cov = data.moments()
    x = samples.reshape(len(samples), -1).double()
    return float((x.mean(0) - mean).norm()), float((torch.cov(x.T) - cov).norm() / cov.norm())


def exact_ode_endpoint(x_T: torch.Tensor, data: GaussianMixture, sigma_max: float) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T (VP, at sigma_max) for Gaussian data: in the eigenbasis
    of Sigma each coordinate of x - mu shrinks by sqrt(lambda / (lambda + sigma_max^2)) (float64)."""
    mu, cov = data.moments()
    lam, U = torch.linalg.eigh(cov)
    x_ve = x_T.reshape(len(x_T), -1).double() * (1 + sigma_max ** 2) ** 0.5 - mu
    z = x_ve @ U * (lam / (lam + sigma_max ** 2)).sqrt()
    return (z @ U.T + mu).reshape(x_T.shape)


__all__ = ["GaussianData", "GaussianEpsModel", "frechet_to_truth", "exact_ode_endpoint"]
