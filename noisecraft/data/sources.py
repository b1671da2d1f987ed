"""Where images come from. Every source works offline (DESIGN.md §5)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from noisecraft.data.transforms import pil_to_array, resize_square_pil, to_unit_range
from noisecraft.errors import NoisecraftError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = ("train", "test", "all")

Loaded = tuple[torch.Tensor, "torch.Tensor | None", "list[str] | None", int]   # images, labels, class names, skipped


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise NoisecraftError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def digits(split: str) -> Loaded:
    """scikit-learn's 1,797 8x8 digits (values 0..16). A fixed stratified hold-out, every fifth
    image of each class in file order, is the 'test' split (360 images); 'train' is the rest."""
    from sklearn.datasets import load_digits

    _check_split(split)
    d = load_digits()
    images = to_unit_range(torch.from_numpy(d.images)[:, None], 16.0)       # (1797, 1, 8, 8)
    labels = torch.from_numpy(d.target).long()
    rank = torch.zeros(len(labels), dtype=torch.long)
    for k in range(10):
        idx = (labels == k).nonzero().squeeze(1)
        rank[idx] = torch.arange(len(idx))
    test = rank % 5 == 4
    keep = {"train": ~test, "test": test, "all": torch.ones_like(test)}[split]
    return images[keep], labels[keep], [str(i) for i in range(10)], 0


def faces(split: str) -> Loaded:
    """scikit-image's LFW subset: the first 100 of its 200 25x25 crops are faces."""
    from skimage.data import lfw_subset

    _check_split(split)
    x = torch.from_numpy(lfw_subset()[:100]).float()[:, None]               # (100, 1, 25, 25) in [0, 1]
    return to_unit_range(x, 1.0), None, None, 0


def fashion_mnist_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("NOISECRAFT_DATA"):
        root = Path(os.environ["NOISECRAFT_DATA"])
        dirs += [root / "fashion-mnist", root]
    return dirs + [Path("/usr/share/datasets/fashion-mnist")]


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise NoisecraftError(f"{path} is not a readable idx file ({e}): re-download it") from None
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise NoisecraftError(f"{path} is not an idx file of the expected kind: re-download it")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise NoisecraftError(f"{path} is truncated ({len(body)} of {int(np.prod(dims))} bytes): re-download it")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(name: str) -> Path:
    for d in fashion_mnist_dirs():
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(d) for d in fashion_mnist_dirs())
    raise NoisecraftError(f"Fashion-MNIST file {name}.gz not found (looked in {looked}): set NOISECRAFT_DATA to a "
                          "folder with the idx .gz files or install the Debian package dataset-fashion-mnist")


def fashion_mnist(split: str) -> Loaded:
    """Zalando's Fashion-MNIST from the standard idx files: 60,000 train, 10,000 test, 28x28."""
    _check_split(split)
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    images, labels = [], []
    for p in parts:
        x = _read_idx(_find(f"{p}-images-idx3-ubyte"), 0x00000803, 3)
        y = _read_idx(_find(f"{p}-labels-idx1-ubyte"), 0x00000801, 1)
        if len(x) != len(y):
            raise NoisecraftError(f"Fashion-MNIST {p}: {len(x)} images but {len(y)} labels: re-download the files")
        images.append(torch.from_numpy(x.copy()))
        labels.append(torch.from_numpy(y.astype(np.int64)))
    return to_unit_range(torch.cat(images)[:, None], 255.0), torch.cat(labels), list(FASHION_CLASSES), 0


def image_folder(root: Path, image_size: int | None, channels: int | None) -> Loaded:
    """Any folder of images, searched recursively, in sorted path order. Labels come from the
    first-level subfolders when every image sits in one. Unreadable files are skipped and counted."""
    if not root.is_dir():
        raise NoisecraftError(f"data source {str(root)!r} is a file, not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise NoisecraftError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    arrays, folders, skipped = [], [], 0
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                if image_size is not None:
                    img = resize_square_pil(img, image_size)
                arrays.append(pil_to_array(img, channels))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            skipped += 1
            continue
        rel = path.relative_to(root).parts
        folders.append(rel[0] if len(rel) > 1 else None)
    if not arrays:
        raise NoisecraftError(f"none of the {len(files)} image files in {root} could be read")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise NoisecraftError(f"images in {root} have different sizes {sorted(shapes)[:3]}: pass an image size to resize them")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)               # (N, C, H, W) uint8
    labels, names = None, None
    if all(f is not None for f in folders):
        names = sorted(set(folders))
        labels = torch.tensor([names.index(f) for f in folders], dtype=torch.long)
    return to_unit_range(x, 255.0), labels, names, skipped
