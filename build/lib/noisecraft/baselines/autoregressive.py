"""A gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders")
over grey pixels quantized to K levels, in raster order:

    p(x) = prod_i p(x_i | x_1, ..., x_{i-1}),  each factor a K-way softmax,

so -log2 p(x) / D is the exact bits per dimension. A vertical stack sees the rows above and a horizontal
stack the pixels to the left in the row, which removes the blind spot of the original PixelCNN's masked
3x3 convolutions; each layer is gated: tanh(W_f * x) * sigmoid(W_g * x) (their eq. 2)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from noisecraft.baselines.common import config_from_dict, config_to_dict, dequantize, draw, quantize
from noisecraft.errors import NoisecraftError


@dataclass(frozen=True)
class ARConfig:
    image_size: int = 16
    in_channels: int = 1
    levels: int = 16                            # K: softmax classes per pixel
    width: int = 32
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 1, 4, 1, 2, 1)    # one gated layer each; rows seen above = 1 + sum
    dropout: float = 0.0                        # on both stacks' gated outputs, in training only

    def __post_init__(self):
        object.__setattr__(self, "dilations", tuple(self.dilations))
        if self.in_channels != 1:
            raise NoisecraftError("the autoregressive baseline models grey images (1 channel): use a grey preset "
                                  "(tiny or mnist)")
        if self.levels < 2 or self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise NoisecraftError("autoregressive levels must be >= 2 and kernel_size odd and >= 3")
        if not 0 <= self.dropout < 1:
            raise NoisecraftError(f"autoregressive dropout must be in [0, 1), got {self.dropout}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    to_dict = config_to_dict

    @classmethod
    def from_dict(cls, d: dict) -> "ARConfig":
        return config_from_dict(cls, d, "autoregressive")


PRESETS: dict[str, ARConfig] = {
    # 16x16 digits at 8 levels: fewer softmax classes to learn, and nothing the digits judge misses (it calls 97.5%
    # of the real test digits confidently, quantized to 8 levels or not). Share of 500 samples it calls confidently:
    # 0.41 with 16 levels after 3,420 steps, 0.58 with 8 after 4,000, 0.69 after 14,000. Without dropout the model
    # over-fits the 1,442 training digits (test 1.03 bits/dim, train 0.18); dropout 0.25 keeps them close (0.46 and
    # 0.41 at 10,000 steps) and its samples improve for longer: 0.63 at 10,000 steps, 0.69 at 14,000, 0.74 at 20,000.
    "tiny": ARConfig(image_size=16, levels=8, width=32, dilations=(1, 2, 1, 4, 1, 2, 1), dropout=0.25),
    "mnist": ARConfig(image_size=28, levels=256, width=64, dilations=(1, 2, 1, 4, 1, 2, 1, 4, 1, 2)),  # Fashion
}


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed 0/1 mask, padded to keep the size."""

    def __init__(self, c_in: int, c_out: int, mask: torch.Tensor, dilation: int = 1):
        kh, kw = mask.shape
        super().__init__(c_in, c_out, (kh, kw), dilation=dilation,
                         padding=(dilation * (kh - 1) // 2, dilation * (kw - 1) // 2))
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding, dilation=self.dilation)


def vertical_mask(k: int, include_centre_row: bool) -> torch.Tensor:
    """k x k: the rows above the centre (and the centre row itself after the first layer, whose inputs
    already see only rows above)."""
    mask = torch.zeros(k, k)
    mask[: k // 2 + include_centre_row] = 1
    return mask


def horizontal_mask(k: int, include_centre: bool) -> torch.Tensor:
    """1 x k: the pixels left of the centre (and the centre after the first layer)."""
    mask = torch.zeros(1, k)
    mask[0, : k // 2 + include_centre] = 1
    return mask


class GatedLayer(nn.Module):
    """One gated PixelCNN layer (van den Oord et al. 2016, Figure 2): the vertical stack feeds the
    horizontal one through a 1x1 convolution; the horizontal stack is residual."""

    def __init__(self, width: int, k: int, dilation: int, first: bool = False, dropout: float = 0.0):
        super().__init__()
        self.first = first
        self.dropout = nn.Dropout(dropout)
        c_in = 1 if first else width
        self.v = MaskedConv2d(c_in, 2 * width, vertical_mask(k, not first), dilation)
        self.h = MaskedConv2d(c_in, 2 * width, horizontal_mask(k, not first), dilation)
        self.v_to_h = nn.Conv2d(2 * width, 2 * width, 1)
        self.h_out = nn.Conv2d(width, width, 1)

    @staticmethod
    def gate(x: torch.Tensor) -> torch.Tensor:
        f, g = x.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_feat = self.v(v)                                        # (B, 2W, H, W)
        h_feat = self.h(h) + self.v_to_h(v_feat)
        h_new = self.h_out(self.dropout(self.gate(h_feat)))
        return self.dropout(self.gate(v_feat)), h_new if self.first else h + h_new


class PixelCNN(nn.Module):
    def __init__(self, config: ARConfig):
        super().__init__()
        self.config = config
        k, w = config.kernel_size, config.width
        self.layers = nn.ModuleList([GatedLayer(w, k, 1, first=True)] +
                                    [GatedLayer(w, k, d, dropout=config.dropout) for d in config.dilations])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(w, w, 1), nn.ReLU(), nn.Conv2d(w, config.levels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) of p(x_i | x_<i) for every pixel, from x (B, 1, H, W) on the K-level grid."""
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) per dimension in nats, per image (B,); x in [-1, 1] is quantized to K levels first."""
        k = quantize(x, self.config.levels)                            # (B, 1, H, W)
        logits = self(dequantize(k, self.config.levels))
        return F.cross_entropy(logits, k[:, 0], reduction="none").flatten(1).mean(1)

    def loss(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """The training loss; `generator` goes unused (an exact likelihood draws no noise) and keeps the
        trainer's call the same for every family."""
        return self.nll(x).mean()

    @torch.no_grad()
    def bits_per_dim(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """The exact -log2 p(x) / D at K levels, per image (B,)."""
        return self.nll(x) / math.log(2)

    @torch.no_grad()
    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n images (n, 1, H, W) in [-1, 1], one pixel at a time in raster order (H*W network calls). Each
        image's uniforms are drawn up front from its own generator and turned into levels by the inverse
        CDF, so an image does not depend on the batch it is drawn in. The network sees only rows 0..r
        when row r is drawn: nothing below can reach row r's outputs through the causal masks."""
        levels, size = self.config.levels, self.config.image_size
        device = self.head[-1].weight.device
        u = draw("uniform", (n, size, size), generator).to(device)     # (n, H, W)
        x = torch.full((n, 1, size, size), -1.0, device=device)
        for r in range(size):
            for c in range(size):
                probs = self(x[:, :, : r + 1])[:, :, r, c].softmax(1)   # (n, K)
                cdf = probs.cumsum(1)
                k = torch.searchsorted(cdf, u[:, r, c, None].contiguous()).clamp(max=levels - 1)   # (n, 1)
                x[:, 0, r, c] = dequantize(k[:, 0], levels)
        return x
