"""Data with an exact optimal denoiser, so a sampler's own error can be measured with no training.

For a Gaussian mixture p(x_0) = sum_k pi_k N(mu_k, Sigma_k) and x = x_0 + sigma eps (the VE view),
    p(x | k) = N(mu_k, Sigma_k + sigma^2 I),   E[x_0 | x, k] = mu_k + Sigma_k (Sigma_k + sigma^2 I)^{-1} (x - mu_k),
and E[x_0 | x] weights the components by their posterior responsibilities. With Sigma_k = U_k diag(l_k) U_k^T
every inverse is a rescaling in the eigenbasis. One component is a plain Gaussian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from noisecraft.diffusion import NoiseSchedule, check_prediction
from noisecraft.diffusion.param import target


@dataclass
class GaussianMixture:
    """pi (K,), mu (K, d), U (K, d, d) orthonormal columns, lam (K, d) eigenvalues; images of `shape`."""

    shape: tuple[int, ...]
    pi: torch.Tensor
    mu: torch.Tensor
    U: torch.Tensor
    lam: torch.Tensor

    @property
    def d(self) -> int:
        return self.mu.shape[1]

    @classmethod
    def image_like(cls, shape=(1, 8, 8), k: int = 8, seed: int = 0, spread=(0.002, 0.05)) -> "GaussianMixture":
        """K smooth random patterns in [-1, 1] (3x3 noise upsampled, through tanh) with unequal weights
        pi_k proportional to k + 1, each with a random covariance whose eigenvalues span `spread`."""
        g = torch.Generator().manual_seed(seed)
        c, h, w = shape
        coarse = torch.randn(k, c, 3, 3, generator=g)
        mu = torch.tanh(2 * torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True))
        d = c * h * w
        U = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))[0]
        lam = torch.logspace(math.log10(spread[0]), math.log10(spread[1]), d, dtype=torch.float64).expand(k, d)
        pi = torch.arange(1, k + 1, dtype=torch.float64)
        return cls(tuple(shape), pi / pi.sum(), mu.reshape(k, d).double(), U, lam.clone())

    @classmethod
    def gaussian(cls, shape=(1, 2, 2), seed: int = 0) -> "GaussianMixture":
        g = torch.Generator().manual_seed(seed)
        d = math.prod(shape)
        mu = torch.rand(1, d, generator=g, dtype=torch.float64) - 0.5
        U = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][None]
        return cls(tuple(shape), torch.ones(1, dtype=torch.float64), mu, U,
                   torch.linspace(0.02, 0.3, d, dtype=torch.float64)[None])

    # -- the exact denoiser -------------------------------------------------------------------------------
    def log_responsibilities(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(k | x) (B, K) for x = x_0 + sigma eps, and z = U_k^T (x - mu_k) (B, K, d)."""
        x = x.reshape(len(x), 1, -1).double()                                   # (B, 1, d)
        var = self.lam[None] + sigma.reshape(-1, 1, 1).double() ** 2             # (B, K, d)
        z = torch.einsum("kde,bke->bkd", self.U.transpose(1, 2), x - self.mu[None])
        logp = self.pi.log() - 0.5 * (var.log() + z ** 2 / var).sum(-1)          # (B, K), constants cancel
        return logp - logp.logsumexp(1, keepdim=True), z

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_0 + sigma eps = x], float64, shaped like x; sigma is a scalar or (B,)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(len(x))
        logw, z = self.log_responsibilities(x, sigma)
        shrink = self.lam[None] / (self.lam[None] + sigma.reshape(-1, 1, 1) ** 2)  # (B, K, d)
        x0_k = self.mu[None] + torch.einsum("kde,bke->bkd", self.U, shrink * z)   # (B, K, d)
        return (logw.exp()[..., None] * x0_k).sum(1).reshape(x.shape)

    # -- the truth to compare against -----------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n exact draws (n, *shape) float64 and their components (n,)."""
        k = torch.multinomial(self.pi, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64) * self.lam[k].sqrt()
        return (self.mu[k] + torch.einsum("nde,ne->nd", self.U[k], z)).reshape(n, *self.shape), k

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's mean (d,) and covariance (d, d)."""
        cov_k = self.U @ torch.diag_embed(self.lam) @ self.U.transpose(1, 2)
        m = self.pi @ self.mu
        second = torch.einsum("k,kde->de", self.pi, cov_k + self.mu[:, :, None] * self.mu[:, None, :])
        return m, second - torch.outer(m, m)

    def mode_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The share of samples assigned (by largest responsibility at sigma = 0) to each component (K,)."""
        logw, _ = self.log_responsibilities(x, torch.zeros(len(x)))
        return torch.bincount(logw.argmax(1), minlength=len(self.pi)).double() / len(x)


class AnalyticEpsModel:
    """The model protocol, model(x_t, t) -> prediction, exact for `data` under `schedule`; counts its calls.
    It predicts eps by default, or x_0 ("sample") or v ("v_prediction"), as its `prediction` says."""

    def __init__(self, data: GaussianMixture, schedule: NoiseSchedule, prediction: str = "epsilon"):
        self.data, self.schedule, self.prediction, self.calls = data, schedule, check_prediction(prediction), 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        self.calls += 1
        a = self.schedule.alpha_bar(t.cpu().double()).reshape(-1, *[1] * (x_t.dim() - 1))   # (B, 1, 1, 1)
        x0 = self.data.denoise(x_t.double() / a.sqrt(), ((1 - a) / a).sqrt().flatten())
        eps = (x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()
        return target(self.prediction, x0, eps, a).to(x_t.dtype)


def frechet_distance(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Frechet distance between N(mean, cov) and the Gaussian fitted to samples x (n, ...), float64:
    |m_x - m|^2 + tr(C_x + C - 2 (C^{1/2} C_x C^{1/2})^{1/2})."""
    x = x.reshape(len(x), -1).double()
    m_x, c_x = x.mean(0), torch.cov(x.T)
    lam, V = torch.linalg.eigh(cov)
    root = V @ torch.diag(lam.clamp(min=0).sqrt()) @ V.T
    cross = torch.linalg.eigvalsh(root @ c_x @ root).clamp(min=0).sqrt().sum()
    return float((m_x - mean).pow(2).sum() + torch.trace(c_x) + torch.trace(cov) - 2 * cross)
