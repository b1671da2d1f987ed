"""Data sources, loaded whole into memory as tensors in [-1, 1] (no per-item decoding while training)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from noisecraft.data import sources
from noisecraft.data.transforms import convert_tensor
from noisecraft.errors import NoisecraftError

SOURCES = {
    "digits": (sources.digits, "1,797 8x8 handwritten digits, 10 classes (scikit-learn); the default"),
    "fashion-mnist": (sources.fashion_mnist, "70,000 28x28 clothes, 10 classes (idx files in $NOISECRAFT_DATA)"),
    "faces": (sources.faces, "100 25x25 face crops (scikit-image's LFW subset)"),
}


@dataclass
class ImageData:
    images: torch.Tensor                 # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor | None          # (N,) int64
    class_names: list[str] | None
    name: str
    skipped: int = 0                     # unreadable files skipped (folders)


def describe_sources() -> list[tuple[str, str]]:
    return [(name, desc) for name, (_, desc) in SOURCES.items()] + [("DIR", "any image folder; labels from subfolders")]


def load_dataset(source: str, image_size: int | None = None, channels: int | None = None, split: str = "train") -> ImageData:
    """A built-in source by name or an image folder, at the requested size and channels
    (None keeps the source's own)."""
    if image_size is not None and image_size < 1:
        raise NoisecraftError(f"image size must be positive, got {image_size}")
    if channels not in (None, 1, 3):
        raise NoisecraftError(f"channels must be 1 or 3, got {channels}")
    if source in SOURCES:
        images, labels, names, skipped = SOURCES[source][0](split)
        images = convert_tensor(images, image_size, channels)
    elif Path(source).exists():
        images, labels, names, skipped = sources.image_folder(Path(source), image_size, channels)
    else:
        raise NoisecraftError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)} or an image folder")
    return ImageData(images, labels, names, str(source), skipped)


__all__ = ["ImageData", "SOURCES", "describe_sources", "load_dataset"]
