"""Any folder of images (DESIGN.md §5), with labels from first-level subfolders and captions from
metadata.jsonl (one {"file_name": ..., "text": ...} per line, the diffusers/datasets convention) or
from a sidecar text file beside each image (cat.png + cat.txt)."""
from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from collections import deque
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from noisecraft.data.transforms import flatten_pil, pil_to_array, resize_square_pil
from noisecraft.data.types import ImageData
from noisecraft.errors import NoisecraftError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# What PIL raises on broken files: truncated data is OSError, bad headers often SyntaxError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


def _hidden(name: str) -> bool:
    # Dot files and "__MACOSX" hold resource forks, checkpoints and caches, not training images.
    return name.startswith((".", "__"))


def list_images(root: Path) -> list[Path]:
    """Image files under `root` (extension case-insensitive), sorted by relative path."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:                    # a symlink loop, or the same folder linked twice
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        found += [Path(dirpath, f) for f in filenames
                  if not _hidden(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    found.sort(key=lambda p: p.relative_to(root).parts)    # in place: a folder of millions is listed once
    return found


def _decode(source: Path | BinaryIO, image_size: int | None) -> Image.Image | None:
    """The fully decoded, upright image from a file path or an open binary file (a tar member),
    or None when PIL cannot read all of it."""
    try:
        with Image.open(source) as img:
            if image_size is not None:
                img.draft(None, (image_size, image_size))   # JPEG: decode at a reduced scale >= size
            img.load()                                      # truncated files fail here, not later
            return ImageOps.exif_transpose(img)             # a copy, valid after the file closes
    except DECODE_ERRORS:
        return None


def image_folder(root: Path, image_size: int | None, channels: int | None) -> ImageData:
    """All images under `root`, converted to `channels` and (if given) resized to a centre
    square of image_size. Labels are the first-level subfolders when every image sits in
    one. Files PIL cannot decode are skipped, counted and warned about."""
    if not root.is_dir():
        raise NoisecraftError(f"data source {str(root)!r} is a file: give a folder of images or a built-in name")
    files = list_images(root)
    if not files:
        raise NoisecraftError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    arrays: deque[np.ndarray] = deque()                     # uint8 (H, W, C), the only copy until stacked
    kept = np.zeros(len(files), dtype=bool)                 # which files decoded (indices, not a second path list)
    bad = 0
    for i, path in enumerate(files):
        img = _decode(path, image_size)
        if img is None:
            bad += 1
            continue
        array = to_array(img, image_size, channels)
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            first = files[int(np.argmax(kept))].relative_to(root)
            raise NoisecraftError(f"images in {root} differ in size ({first} is {arrays[0].shape[1]}x{arrays[0].shape[0]}, "
                                  f"{path.relative_to(root)} is {array.shape[1]}x{array.shape[0]}): pass image_size to resize them")
        arrays.append(array)
        kept[i] = True
    if not arrays:
        raise NoisecraftError(f"none of the {len(files)} image files in {root} could be read: check they are valid images")
    if bad:
        first_bad = files[int(np.argmin(kept))].relative_to(root)
        warnings.warn(f"skipped {bad} unreadable image file(s) in {root} (first: {first_bad})", stacklevel=3)
    images = stack_arrays(arrays, channels)

    labels, class_names = None, None
    if all(len(p.relative_to(root).parts) > 1 for p in files):
        # Names come from every listed file, so indices do not shift when a file is unreadable.
        class_names = sorted({p.relative_to(root).parts[0] for p in files})
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[files[i].relative_to(root).parts[0]] for i in np.flatnonzero(kept)],
                              dtype=torch.long)
    kept_files = [files[i] for i in np.flatnonzero(kept)] if bad else files
    return ImageData(images, labels, class_names, str(root), skipped=bad, captions=folder_captions(root, kept_files))


def to_array(img: Image.Image, image_size: int | None, channels: int | None) -> np.ndarray:
    """A decoded image -> uint8 (H, W, C) with `channels` (None: its own) and, if given, a centre square resized."""
    img = flatten_pil(img, channels)
    if image_size is not None:
        img = resize_square_pil(img, image_size)
    return pil_to_array(img)


def stack_arrays(arrays: deque[np.ndarray], channels: int | None) -> torch.Tensor:
    """Same-size uint8 (H, W, C) arrays -> (N, C, H, W) float32 in [-1, 1], emptying the deque as it
    goes so only one copy of the pixels is alive at a time."""
    h, w = arrays[0].shape[:2]
    c = channels or max(a.shape[2] for a in arrays)         # a mixed grey/RGB folder becomes RGB
    images = torch.empty((len(arrays), c, h, w))            # (N, C, H, W)
    for i in range(len(images)):
        images[i] = torch.from_numpy(arrays.popleft()).permute(2, 0, 1)   # grey broadcasts to RGB
    return images.div_(127.5).sub_(1)


def folder_captions(root: Path, files: list[Path]) -> list[str] | None:
    """Each image's caption, from root/metadata.jsonl or a .txt beside it; None when the folder has neither.
    An image with no caption when others have one gets the empty caption (unconditional), with a warning."""
    meta = root / "metadata.jsonl"
    found: dict[Path, str] = {}
    if meta.is_file():
        for n, line in enumerate(meta.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                found[(root / row["file_name"]).resolve()] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise NoisecraftError(f"{meta} line {n} is not a JSON object with file_name and text: fix or remove "
                                      "that line") from None
    for path in files:
        side = path.with_suffix(".txt")
        if path.resolve() not in found and side.is_file():
            found[path.resolve()] = side.read_text(encoding="utf-8", errors="replace").strip()
    if not found:
        return None
    captions = [found.get(path.resolve(), "") for path in files]
    missing = sum(1 for path in files if path.resolve() not in found)
    if missing:
        warnings.warn(f"{missing} image(s) in {root} have no caption and train as unconditional", stacklevel=3)
    return captions
