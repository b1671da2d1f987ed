"""Noise schedules: betas, alpha_bar, sigma and log-SNR, for integer and fractional t.

Timestep t in [0, T-1] indexes the paper's steps 1..T: betas[t] is beta_{t+1} of
Ho et al. (2020). alpha_bar at "t = -1" (clean data) is 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from noisecraft.errors import NoisecraftError


@dataclass(frozen=True)
class ScheduleConfig:
    """What config.json stores to rebuild a schedule."""

    kind: str = "linear"  # "linear" | "cosine"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008


class NoiseSchedule:
    """A discrete variance-preserving schedule with continuous (fractional-t) views."""

    def __init__(self, betas: torch.Tensor, config: ScheduleConfig | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise NoisecraftError("betas must be a 1-D sequence of at least 2 values in (0, 1)")
        self.config = config or ScheduleConfig(kind="custom", num_timesteps=len(betas))
        self.betas = betas                                         # beta_t
        self.alphas = 1.0 - betas                                  # alpha_t = 1 - beta_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)    # alpha_bar_t = prod_s alpha_s
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # VE view (Karras et al. 2022, x_sigma = x_t / sqrt(alpha_bar)): sigma^2 = (1 - alpha_bar) / alpha_bar
        self.sigmas = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()
        # log-SNR lambda_t = log(alpha_bar / (1 - alpha_bar)) = -2 log sigma (Kingma et al. 2021)
        self.log_snr = -2.0 * self.log_sigmas
        # Posterior variance beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t (DDPM eq. 7)
        self.posterior_variance = (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * betas

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Ho et al. (2020) §4: betas linear from 1e-4 to 0.02 over T = 1000 steps."""
        _check_T(num_timesteps)
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        return cls(betas, ScheduleConfig("linear", num_timesteps, beta_start, beta_end))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021) eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
        betas = 1 - alpha_bar(t+1)/alpha_bar(t) clipped at 0.999."""
        _check_T(num_timesteps)

        def f(t: float) -> float:
            return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
        return cls(torch.tensor(betas, dtype=torch.float64), ScheduleConfig("cosine", num_timesteps, cosine_s=s))

    @classmethod
    def from_config(cls, config: ScheduleConfig | dict) -> "NoiseSchedule":
        c = config if isinstance(config, ScheduleConfig) else ScheduleConfig(**config)
        if c.kind == "linear":
            return cls.linear(c.num_timesteps, c.beta_start, c.beta_end)
        if c.kind == "cosine":
            return cls.cosine(c.num_timesteps, c.cosine_s)
        raise NoisecraftError(f"unknown schedule kind {c.kind!r}: use 'linear' or 'cosine'")

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def __len__(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.config.kind}, T={self.num_timesteps})"

    # Fractional timesteps: log-sigma is interpolated linearly between the neighbouring
    # integer steps, in both directions, so the two maps are exact inverses.
    def t_to_sigma(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_timesteps - 1)
        low = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()

    def sigma_to_t(self, sigma) -> torch.Tensor:
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
        log_sigma = log_sigma.clamp(self.log_sigmas[0], self.log_sigmas[-1])
        high = torch.searchsorted(self.log_sigmas, log_sigma.contiguous()).clamp(1, self.num_timesteps - 1)
        low = high - 1
        w = (log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])
        return low.to(torch.float64) + w

    def alpha_bar(self, t) -> torch.Tensor:
        """alpha_bar at (fractional) t; t = -1 means clean data (alpha_bar = 1)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        ab = 1.0 / (1.0 + self.t_to_sigma(t) ** 2)
        return torch.where(t < 0, torch.ones_like(ab), ab)


def _check_T(num_timesteps: int) -> None:
    if num_timesteps < 2:
        raise NoisecraftError(f"num_timesteps must be at least 2, got {num_timesteps}")
