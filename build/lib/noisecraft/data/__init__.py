"""Image data sources (DESIGN.md §5), loaded whole into memory as float32 tensors in [-1, 1]."""
from __future__ import annotations

import numbers
import os
from dataclasses import replace
from pathlib import Path

from noisecraft.data.folder import image_folder
from noisecraft.data.shards import is_shard_source, shard_dataset
from noisecraft.data.sources import BUILTIN
from noisecraft.data.transforms import convert_tensor
from noisecraft.data.types import SPLITS, ImageData
from noisecraft.errors import NoisecraftError

SOURCES: tuple[str, ...] = tuple(BUILTIN)


def describe_sources() -> list[tuple[str, str]]:
    """(name, description) of every source, for listings; "DIR" stands for an image folder."""
    return [(name, src.description) for name, src in BUILTIN.items()] + [
        ("DIR", "any image folder; labels from first-level subfolders when every image sits in one"),
        ("SHARDS", "WebDataset tar shards, read in place: shards-{000000..000009}.tar or a folder of .tar "
                   "files (key.png/.jpg, optional key.cls class index, key.txt caption)")]


def load_dataset(source: str | os.PathLike[str], image_size: int | None = None, channels: int | None = None,
                 split: str = "train", lazy: bool = False) -> ImageData:
    """A built-in source by name (see SOURCES), else an image folder, at image_size x image_size
    and `channels` (1 or 3); None keeps the source's own. split is "train", "test" or "all";
    sources without a hold-out (faces, folders) give all their images for "train" and "all".
    A built-in name wins over a folder of the same name: write "./digits" for the folder.
    Tar shards (data/shards.py) are a pattern like "shards-{000000..000009}.tar" or a folder of .tar
    files; with lazy=True their `images` decode on indexing (images[idx] -> tensor) instead of all
    at once, for sets larger than memory. Every other source gives a tensor either way."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
                                   or image_size < 1):
        raise NoisecraftError(f"image size must be a positive integer, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise NoisecraftError(f"channels must be 1 or 3, got {channels!r}")
    if split not in SPLITS:
        raise NoisecraftError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    size = None if image_size is None else int(image_size)
    name = os.fspath(source)
    if name in BUILTIN:
        src = BUILTIN[name]
        if split not in src.splits:
            raise NoisecraftError(f"{name} has no {split!r} split: use one of {', '.join(src.splits)}")
        data = src.load(split)
        return replace(data, images=convert_tensor(data.images, size, channels))
    if name and is_shard_source(name):
        if split == "test":
            raise NoisecraftError(f"tar shards have no 'test' split ({name}): load separate test shards")
        return shard_dataset(name, size, channels, lazy)
    path = Path(name).expanduser()
    if not name or not path.exists():
        raise NoisecraftError(f"unknown data source {name!r}: use one of {', '.join(SOURCES)} or an image folder")
    if split == "test":
        raise NoisecraftError(f"an image folder has no 'test' split ({name}): load a separate folder of test images")
    return image_folder(path, size, channels)


__all__ = ["ImageData", "SOURCES", "describe_sources", "load_dataset"]
