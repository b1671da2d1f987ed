"""The classic alternatives to diffusion, trained and sampled through the same CLI and model directories:
a VAE (vae.py), a GAN (gan.py) and a gated PixelCNN (autoregressive.py).

Every family's inference module has `.config` (its dataclass, with `image_shape`) and
`sample(n, generator)` -> (n, C, H, W) in [-1, 1]; VAE and PixelCNN add `bits_per_dim(x)`.
A model directory's config.json is {"family": ..., FAMILY: {its config}, "data": ..., "description": ...}."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from noisecraft.baselines import autoregressive, gan, vae
from noisecraft.errors import NoisecraftError
from noisecraft.version import __version__

# family -> (config class, presets, the module that samples)
FAMILIES = {
    "vae": (vae.VAEConfig, vae.PRESETS, vae.VAE),
    "gan": (gan.GANConfig, gan.PRESETS, gan.Generator),
    "autoregressive": (autoregressive.ARConfig, autoregressive.PRESETS, autoregressive.PixelCNN),
}


@dataclass
class BaselineConfig:
    """What a baseline's config.json holds."""

    family: str
    net: vae.VAEConfig | gan.GANConfig | autoregressive.ARConfig
    data: str = ""
    description: str = ""
    noisecraft_version: str = __version__

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.net.image_shape

    def to_dict(self) -> dict:
        return {"family": self.family, self.family: self.net.to_dict(), "data": self.data,
                "description": self.description, "noisecraft_version": self.noisecraft_version}

    @classmethod
    def from_dict(cls, d: dict) -> "BaselineConfig":
        d = dict(d)
        family = d.pop("family", None)
        if family not in FAMILIES:
            raise NoisecraftError(f"config.json names family {family!r}: noisecraft knows diffusion, {', '.join(FAMILIES)}")
        if not isinstance(d.get(family), dict):
            raise NoisecraftError(f"config.json of a {family} model has no {family!r} section")
        net = FAMILIES[family][0].from_dict(d.pop(family))
        try:
            return cls(family=family, net=net, **d)
        except TypeError as e:
            raise NoisecraftError(f"config.json is not a noisecraft {family} config ({e})") from None


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise NoisecraftError(f"unknown --model {family!r}: use diffusion, {', '.join(FAMILIES)}")


def preset(family: str, name: str):
    """The family's config for a preset name: tiny (16x16 grey) or mnist (28x28 grey), as the UNet's; the VAE
    also has tiny-spatial and base (64x64 RGB), spatial latents for latent diffusion."""
    presets = FAMILIES[family][1]
    if name not in presets:
        raise NoisecraftError(f"unknown preset {name!r} for --model {family}: use one of {', '.join(presets)}")
    return presets[name]


def build(config: BaselineConfig) -> nn.Module:
    """A fresh inference module (VAE, GAN generator or PixelCNN) for a config."""
    return FAMILIES[config.family][2](config.net)


def sample_seeded(model: nn.Module, seeds, batch_size: int, callback=lambda: None) -> torch.Tensor:
    """One image per seed, image i from its own torch.Generator seeded seeds[i] (so it is the same whatever
    the batch size), in batches of batch_size; callback() after each batch. (len(seeds), C, H, W) on the CPU."""
    seeds = list(seeds)
    out = []
    for start in range(0, len(seeds), batch_size):
        gens = [torch.Generator().manual_seed(s) for s in seeds[start:start + batch_size]]
        out.append(model.sample(len(gens), gens).cpu())
        callback()
    return torch.cat(out)


def load_baseline(model_dir: Path, raw: dict) -> nn.Module:
    """The inference module of a baseline model directory (config.json already parsed as `raw`), in eval mode."""
    from noisecraft.models import WEIGHTS_FILE, load_state, read_weights

    config = BaselineConfig.from_dict(raw)
    model = build(config)
    load_state(model, read_weights(model_dir / WEIGHTS_FILE), model_dir / WEIGHTS_FILE)
    model.model_config = config
    return model.eval()


__all__ = ["BaselineConfig", "FAMILIES", "build", "check_family", "load_baseline", "preset", "sample_seeded"]
