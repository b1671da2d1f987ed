"""The built-in data sources (DESIGN.md §5), one function each; all work offline."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from noisecraft.data.idx import read_idx
from noisecraft.data.transforms import to_unit_range
from noisecraft.data.types import SPLITS, ImageData
from noisecraft.errors import NoisecraftError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")      # Debian's dataset-fashion-mnist
FASHION_PREFIX = {"train": "train", "test": "t10k"}


def digits(split: str) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (values 0..16). "test" is a fixed stratified hold-out,
    every fifth image of each class in file order (355 images); "train" is the other 1,442."""
    from sklearn.datasets import load_digits

    d = load_digits()
    test = np.zeros(len(d.target), dtype=bool)
    for k in range(10):
        test[np.flatnonzero(d.target == k)[4::5]] = True
    keep = {"train": ~test, "test": test, "all": np.ones_like(test)}[split]
    images = to_unit_range(d.images[keep, None], 16.0)   # (N, 1, 8, 8)
    labels = torch.from_numpy(d.target[keep]).long()
    return ImageData(images, labels, [str(k) for k in range(10)], "digits")


def faces(split: str) -> ImageData:
    """scikit-image's LFW subset: of its 200 25x25 crops the first 100 are faces, the rest
    background patches. One set of 100 (no test split)."""
    from skimage.data import lfw_subset

    x = np.asarray(lfw_subset()[:100])
    # skimage documents uint8 but ships floats in [0, 1]; accept either.
    scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    return ImageData(to_unit_range(x[:, None], scale), None, None, "faces")  # (100, 1, 25, 25)


def fashion_mnist_dirs() -> list[Path]:
    """Where the idx files are looked for, in order."""
    env = os.environ.get("NOISECRAFT_DATA")
    return ([Path(env), Path(env) / "fashion-mnist"] if env else []) + [FASHION_SYSTEM_DIR]


def _find_fashion_file(stem: str) -> Path:
    dirs = fashion_mnist_dirs()
    for d in dirs:
        for candidate in (d / f"{stem}.gz", d / stem):
            if candidate.is_file():
                return candidate
    raise NoisecraftError(f"Fashion-MNIST file {stem}.gz not found (looked in {', '.join(map(str, dirs))}): set "
                          "NOISECRAFT_DATA to a folder holding the four idx .gz files, "
                          "or run `apt install dataset-fashion-mnist`")


def fashion_mnist(split: str) -> ImageData:
    """Zalando's Fashion-MNIST from the standard idx files: 60,000 train and 10,000 test 28x28."""
    images, labels = [], []
    for part in ("train", "test") if split == "all" else (split,):
        prefix = FASHION_PREFIX[part]
        x = read_idx(_find_fashion_file(f"{prefix}-images-idx3-ubyte"), 3)
        y = read_idx(_find_fashion_file(f"{prefix}-labels-idx1-ubyte"), 1)
        if len(x) != len(y):
            raise NoisecraftError(f"Fashion-MNIST {part} has {len(x)} images but {len(y)} labels: download the files again")
        if len(y) and int(y.max()) >= len(FASHION_CLASSES):
            raise NoisecraftError(f"Fashion-MNIST {part} labels go up to {int(y.max())} but there are 10 classes: "
                                  "download the files again")
        images.append(to_unit_range(x[:, None], 255.0))    # (n, 1, 28, 28)
        labels.append(torch.from_numpy(y.astype(np.int64)))
    return ImageData(torch.cat(images), torch.cat(labels), list(FASHION_CLASSES), "fashion-mnist")


def emoji(split: str) -> ImageData:
    """Google's 64x64 emoji with their names as captions, unpacked by `noisecraft data emoji` (RGBA on white)."""
    from noisecraft.data.emoji import emoji_dir
    from noisecraft.data.folder import image_folder

    path = emoji_dir()
    if not (path / "metadata.jsonl").is_file():
        raise NoisecraftError(f"the emoji set is not unpacked in {path}: run `noisecraft data emoji` first (needs npm)")
    data = image_folder(path, None, 3)
    return ImageData(data.images, None, None, "emoji", captions=data.captions)


def shapes(split: str) -> ImageData:
    """The procedural shapes set (data/shapes.py), 32x32 RGB with captions: 20,000 train scenes without the
    held-out colour/shape pairs, 2,000 test scenes that each use one; generated the same way every time."""
    from noisecraft.data.shapes import make_split

    parts = {"train": [(20_000, 0, False)], "test": [(2_000, 1, True)]}
    made = [make_split(*p) for p in (parts["train"] + parts["test"] if split == "all" else parts[split])]
    return ImageData(torch.cat([m[0] for m in made]), None, None, "shapes", captions=[c for m in made for c in m[1]])


@dataclass(frozen=True)
class Source:
    """A built-in source: its loader, a line for listings, and the splits it has."""

    load: Callable[[str], ImageData]
    description: str
    splits: tuple[str, ...] = SPLITS


BUILTIN: dict[str, Source] = {
    "digits": Source(digits, "1,797 8x8 handwritten digits, 10 classes (scikit-learn); the default; "
                             "test = every 5th of each class"),
    "fashion-mnist": Source(fashion_mnist, "70,000 28x28 clothing images, 10 classes (idx .gz files in "
                                           f"$NOISECRAFT_DATA or {FASHION_SYSTEM_DIR})"),
    "faces": Source(faces, "100 25x25 grey face crops (scikit-image's LFW subset)", ("train", "all")),
    "shapes": Source(shapes, "32x32 coloured circles, squares and triangles with captions such as 'a red circle "
                             "left of a blue square', and an exact prompt checker; test = held-out colour/shape pairs"),
    "emoji": Source(emoji, "3,786 64x64 emoji with their names as captions (`noisecraft data emoji` unpacks "
                           "the npm package emoji-datasource-google)", ("train", "all")),
}
