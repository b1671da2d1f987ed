"""What the three baseline families share: per-image random draws, config (de)serialization with
presets, and the pixel grid that their likelihoods are defined on."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Sequence

import torch

from noisecraft.errors import NoisecraftError


def draw(kind: str, shape: Sequence[int], generator) -> torch.Tensor:
    """torch.randn ("normal") or torch.rand ("uniform") of `shape`; a list of generators, one per image
    (shape[0] of them), gives image i its own stream, so image i is the same whatever batch it is in."""
    fn = torch.randn if kind == "normal" else torch.rand
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise NoisecraftError(f"got {len(generator)} generators for {shape[0]} images: pass one per image")
        return torch.stack([fn(tuple(shape[1:]), generator=g) for g in generator])
    return fn(tuple(shape), generator=generator)


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Bin index k in 0..levels-1 of each value of x in [-1, 1]: the grid is -1 + 2k/(levels-1), so
    black and white are levels themselves (as 8-bit images are for levels=256)."""
    return torch.round((x.clamp(-1, 1) + 1) / 2 * (levels - 1)).long()


def dequantize(k: torch.Tensor, levels: int) -> torch.Tensor:
    return k.float() / (levels - 1) * 2 - 1


def config_from_dict(cls, d: dict, family: str):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise NoisecraftError(f"unknown {family} config keys {sorted(unknown)}: the model was written by a newer noisecraft?")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def config_to_dict(config) -> dict:
    return asdict(config)


def get_preset(presets: dict, name: str, family: str):
    if name not in presets:
        raise NoisecraftError(f"unknown {family} preset {name!r}: use one of {', '.join(presets)}")
    return presets[name]
