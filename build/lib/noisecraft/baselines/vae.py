"""A convolutional variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

Decoder likelihood: a Gaussian with a learned per-channel scale, integrated over the pixel's bin of a
`levels`-level grid (the discretized Gaussian of Ho et al. 2020 eq. 13). Why not a Bernoulli decoder: the
data are grey levels, not binary, and a Bernoulli "likelihood" of a grey value is no normalized
distribution, so its ELBO is no bound on anything. Why a learned scale: a fixed one silently sets the
weight of reconstruction against KL (the "calibrated decoder" of Rybkin et al. 2021). Why discretized: the
ELBO is then a bound on the log-probability of the quantized image, in bits per dimension comparable
with the autoregressive model's exact figure and with diffusion's bound at the same number of levels.

The latent is a vector (latent_dim, through Linear heads) or, with latent_channels > 0, a feature map
(latent_channels, H/2^k, W/2^k) for k stride-2 stages, through 3x3 convolution heads: the "KL-regularized
autoencoder" whose latents latent diffusion models (Rombach et al. 2022, §3 and Appendix G).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from noisecraft.baselines.common import config_from_dict, config_to_dict, dequantize, draw, quantize
from noisecraft.diffusion.bound import discretized_gaussian_log_likelihood
from noisecraft.errors import NoisecraftError


@dataclass(frozen=True)
class VAEConfig:
    image_size: int = 16
    in_channels: int = 1
    widths: tuple[int, ...] = (32, 64)    # one stride-2 stage per width
    latent_dim: int = 16                  # the vector latent's size (when latent_channels is 0)
    latent_channels: int = 0              # > 0: a spatial latent (latent_channels, image_size / 2^len(widths), same)
    beta: float = 1.0                     # KL weight of the training loss (Higgins et al. 2017); the bound uses 1
    levels: int = 256                     # the likelihood's pixel grid

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        if self.image_size % 2 ** len(self.widths):
            raise NoisecraftError(f"VAE image_size {self.image_size} must be divisible by {2 ** len(self.widths)} "
                                  f"for {len(self.widths)} stride-2 stages")
        if self.beta < 0 or self.levels < 2 or self.latent_dim < 1 or self.latent_channels < 0:
            raise NoisecraftError("VAE beta must be >= 0, levels >= 2, latent_dim >= 1 and latent_channels >= 0")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One image's z: (latent_dim,) or (latent_channels, side, side)."""
        if not self.latent_channels:
            return (self.latent_dim,)
        side = self.image_size // 2 ** len(self.widths)
        return (self.latent_channels, side, side)

    to_dict = config_to_dict

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        return config_from_dict(cls, d, "vae")


PRESETS: dict[str, VAEConfig] = {
    # 16x16 grey digits. Prior samples must land where the decoder was trained: the share of 500 samples the
    # digits judge calls with confidence >= 0.9 (and the TV of their class histogram to uniform), after 6,000
    # steps, measured 0.65 (TV 0.38) for latent_dim 4, widths (32, 64), beta 1; 0.69 (0.27) with beta 4; 0.72
    # (0.39) with widths (64, 128); 0.72 (0.22) with both, this preset. Latent 8 with beta 4 gave 0.60; latent 2
    # gave 0.77 but drew almost no 1, 2 or 7 (TV 0.32). beta 4 also lowered the test bound (5.11 -> 5.03 bits/dim).
    "tiny": VAEConfig(image_size=16, in_channels=1, widths=(64, 128), latent_dim=4, beta=4.0),
    "mnist": VAEConfig(image_size=28, in_channels=1, widths=(32, 64), latent_dim=32),    # 28x28 Fashion-MNIST
    # Spatial latents for latent diffusion (noisecraft train --latent): 16x16 grey -> 4x4x4, and 64x64 RGB ->
    # 4x16x16 (LDM's f=4, 12x fewer numbers than pixels). beta < 1 trades prior fit for sharper reconstructions,
    # as LDM's tiny KL weight does: the diffusion model, not the Gaussian prior, models these latents.
    "tiny-spatial": VAEConfig(image_size=16, in_channels=1, widths=(32, 64), latent_channels=4, beta=0.5),
    "base": VAEConfig(image_size=64, in_channels=3, widths=(64, 128), latent_channels=4, beta=0.5),
}


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row (summed over every other dimension), Kingma & Welling 2014
    Appendix B."""
    return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c, w = config.in_channels, config.widths
        self.side = config.image_size // 2 ** len(w)
        enc, prev = [nn.Conv2d(c, w[0], 3, padding=1), nn.SiLU()], w[0]
        for width in w:
            enc += [nn.Conv2d(prev, width, 4, stride=2, padding=1), nn.SiLU()]
            prev = width
        if config.latent_channels:
            self.encoder = nn.Sequential(*enc, nn.Conv2d(prev, 2 * config.latent_channels, 3, padding=1))
            self.project = nn.Conv2d(config.latent_channels, w[-1], 3, padding=1)
        else:
            self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(prev * self.side ** 2, 2 * config.latent_dim))
            self.project = nn.Linear(config.latent_dim, w[-1] * self.side ** 2)
        dec = []
        for width, nxt in zip(w[::-1], (*w[::-1][1:], w[0])):
            dec += [nn.SiLU(), nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec, nn.SiLU(), nn.Conv2d(w[0], c, 3, padding=1))
        self.log_scale = nn.Parameter(torch.zeros(c, 1, 1))    # decoder log sigma, one per channel

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar))): (B, *latent_shape) each."""
        return self.encoder(x).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z), (B, C, H, W)."""
        return self.decoder(self.project(z).view(len(z), self.config.widths[-1], self.side, self.side))  # (B, C, H, W)

    def elbo_terms(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, in nats: log p(x|z) at z = mu + sigma * eps (the reparameterization, K&W 2014 eq. 10)
        and KL(q(z|x) || p(z)). x is snapped to the likelihood's grid first."""
        x = dequantize(quantize(x, self.config.levels), self.config.levels)         # (B, C, H, W)
        mu, logvar = self.encode(x)
        z = mu + (0.5 * logvar).exp() * eps                                        # (B, *latent_shape)
        rec = discretized_gaussian_log_likelihood(x, self.decode(z), self.log_scale, self.config.levels)
        return rec.flatten(1).sum(1), gaussian_kl(mu, logvar)

    def loss(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Negative beta-ELBO per dimension in nats (K&W 2014 eq. 10; beta: Higgins et al. 2017)."""
        rec, kl = self.elbo_terms(x, draw("normal", (len(x), *self.config.latent_shape), generator).to(x.device))
        return (-rec + self.config.beta * kl).mean() / x[0].numel()

    @torch.no_grad()
    def bits_per_dim(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """An upper bound on -log2 P(x) per dimension at `levels` grey levels (the negative ELBO with beta 1,
        one posterior sample per image; its average over images is unbiased), shape (B,)."""
        rec, kl = self.elbo_terms(x, draw("normal", (len(x), *self.config.latent_shape), generator).to(x.device))
        return (kl - rec) / (x[0].numel() * math.log(2))

    @torch.no_grad()
    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1]: z ~ N(0, I), then the decoder's mean, as VAE papers show (the
        per-pixel Gaussian noise on top adds grain, not content)."""
        z = draw("normal", (n, *self.config.latent_shape), generator).to(self.log_scale.device)
        return self.decode(z).clamp(-1, 1)
