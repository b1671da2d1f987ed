"""A DCGAN (Radford et al. 2016): transposed-convolution generator with batch norm, strided-convolution
discriminator, here with spectral normalization on every discriminator layer (Miyato et al. 2018) and
either the hinge loss or the non-saturating loss. Sampling uses an EMA of the generator's weights
(Karras et al. 2018; Yazici et al. 2019). A GAN has no likelihood, so no bits per dimension."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from noisecraft.baselines.common import config_from_dict, config_to_dict, draw
from noisecraft.errors import NoisecraftError

LOSSES = ("hinge", "non_saturating")


@dataclass(frozen=True)
class GANConfig:
    image_size: int = 16
    in_channels: int = 1
    z_dim: int = 64
    width: int = 32                 # channels at full resolution; x2 per stride-2 stage, two stages
    loss: str = "hinge"

    def __post_init__(self):
        if self.image_size % 4:
            raise NoisecraftError(f"GAN image_size must be divisible by 4 (two stride-2 stages), got {self.image_size}")
        if self.loss not in LOSSES:
            raise NoisecraftError(f"unknown GAN loss {self.loss!r}: use {' or '.join(LOSSES)}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    to_dict = config_to_dict

    @classmethod
    def from_dict(cls, d: dict) -> "GANConfig":
        return config_from_dict(cls, d, "gan")


PRESETS: dict[str, GANConfig] = {
    "tiny": GANConfig(image_size=16, in_channels=1, z_dim=64, width=32),      # 16x16 grey digits
    "mnist": GANConfig(image_size=28, in_channels=1, z_dim=64, width=32),     # 28x28 Fashion-MNIST
}


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, C, H, W) in [-1, 1]; DCGAN's recipe: BN + ReLU, tanh output."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        w, self.side = config.width, config.image_size // 4
        self.project = nn.Linear(config.z_dim, 4 * w * self.side ** 2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, config.in_channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(len(z), 4 * self.config.width, self.side, self.side))

    @torch.no_grad()
    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1] from z ~ N(0, I) (batch norm uses its running statistics)."""
        return self(draw("normal", (n, self.config.z_dim), generator).to(self.project.weight.device))


class Discriminator(nn.Module):
    """image -> one logit per image; LeakyReLU(0.2), every layer spectrally normalized (Miyato et al. 2018)."""

    def __init__(self, config: GANConfig):
        super().__init__()
        w, side = config.width, config.image_size // 4
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(config.in_channels, w, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            nn.Flatten(), spectral_norm(nn.Linear(4 * w * side ** 2, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)                               # (B,)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """From D's logits on real and generated images. hinge: E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]
    (Lim & Ye 2017; Miyato et al. 2018 eq. 16); non_saturating: the cross-entropy of Goodfellow et al. 2014
    eq. 1, -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))."""
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """hinge: -E[D(G(z))]; non_saturating: -E[log sigmoid(D(G(z)))], the gradient-friendly form of
    minimizing log(1 - D(G(z))) (Goodfellow et al. 2014, section 3)."""
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()
