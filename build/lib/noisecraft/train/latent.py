"""Latent diffusion's training data (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"): a trained VAE with a spatial latent encodes the whole data set once, and the UNet
learns the distribution of those latents instead of the pixels'.

Each image becomes its posterior mean (deterministic, so a resumed run sees the same data), and all
latents are multiplied by one scale factor 1 / std, estimated over the whole set (LDM Appendix G
estimates it on the first batch; Stable Diffusion ships it as `scaling_factor`), so they have the unit
variance the noise schedule was designed for."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from noisecraft.errors import NoisecraftError

TRAIN_A_VAE = "noisecraft train --model vae --preset base (or tiny-spatial) --data SOURCE --out VAE_DIR"


def load_vae(vae_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The VAE of a model directory written by `noisecraft train --model vae`, frozen, in eval mode; any
    other directory, or a VAE with a vector latent, is a NoisecraftError saying what to train instead."""
    from noisecraft.models import load_model

    path = Path(vae_dir)
    if not path.is_dir():
        raise NoisecraftError(f"--latent {vae_dir} is not a folder: give a VAE model directory ({TRAIN_A_VAE})")
    model = load_model(path, device)
    family = getattr(getattr(model, "model_config", None), "family", "diffusion")
    if family != "vae":
        raise NoisecraftError(f"--latent {vae_dir} holds a {family} model, not a VAE: give a VAE model directory "
                              f"({TRAIN_A_VAE})")
    if not model.config.latent_channels:
        raise NoisecraftError(f"the VAE in {vae_dir} has a vector latent ({model.config.latent_dim} numbers), and latent "
                              f"diffusion needs a spatial one: train it with a spatial preset ({TRAIN_A_VAE})")
    return model.requires_grad_(False)


@torch.no_grad()
def encode_dataset(vae: nn.Module, images, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of every image, (N, *latent_shape) float32 on the VAE's device; `images` is an
    (N, C, H, W) tensor or lazy shards (indexed by row tensors)."""
    device = vae.log_scale.device
    out = []
    for start in range(0, len(images), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(images)))
        out.append(vae.encode(images[rows].to(device))[0])                  # (b, c, h, w)
    return torch.cat(out)


def latent_scale(latents: torch.Tensor) -> float:
    """1 / std of all latent values (Rombach et al. 2022, Appendix G), so the scaled latents have unit variance."""
    std = latents.double().std().item()
    if not std > 0:
        raise NoisecraftError("the VAE encodes every image to the same latent (std 0): it is untrained or collapsed; "
                              "train it longer")
    return 1.0 / std
