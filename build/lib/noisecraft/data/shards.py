"""Data too large for a folder listing: tar shards in the WebDataset layout, read in place.

A shard is a plain (uncompressed) .tar whose members are grouped by key, the path up to the first
dot of the file name: `000123.png` (or .jpg, ...) with an optional `000123.cls` (a class index)
and `000123.txt` (a caption). A source names the shards as `shards-{000000..000009}.tar` (brace
ranges and `{a,b}` lists), one .tar, or a folder of .tar files.

Opening a source reads only the tar headers (and the small .cls/.txt members) into a compact index,
about 20 bytes a sample; images are decoded when a batch asks for them, from a seek into the shard.
Random access keeps the data order of every source the same seeded permutation, so training from
shards matches training from the same images in a folder, and resuming mid-epoch is exact."""
from __future__ import annotations

import io
import posixpath
import re
import tarfile
import warnings
from array import array
from collections import OrderedDict, deque
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from noisecraft.data.folder import IMAGE_EXTENSIONS, _decode, stack_arrays, to_array
from noisecraft.data.types import ImageData
from noisecraft.errors import NoisecraftError

IMAGE_KINDS = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
OPEN_SHARDS = 64                      # file handles kept open at once (least recently used closed first)


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{x,y}` lists too."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    if r := re.fullmatch(r"(\d+)\.\.(\d+)", m[1]):
        width = len(r[1])
        items = [f"{i:0{width}d}" for i in range(int(r[1]), int(r[2]) + 1)]
    else:
        items = m[1].split(",")
    return [name for item in items for name in expand_braces(pattern[:m.start()] + item + pattern[m.end():])]


def is_shard_source(name: str) -> bool:
    """A brace pattern or path ending in .tar, or a folder holding .tar files and no images at its top."""
    if name.endswith(".tar") or ("{" in name and ".tar" in name):
        return True
    path = Path(name).expanduser()
    if not path.is_dir():
        return False
    top = [p.suffix.lower() for p in path.iterdir() if not p.name.startswith(".")]
    return ".tar" in top and not any(ext in IMAGE_EXTENSIONS for ext in top)


def shard_paths(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix == ".tar" and not p.name.startswith("."))
    else:
        paths = [Path(p).expanduser() for p in expand_braces(source)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise NoisecraftError(f"shard {missing[0]} does not exist ({len(missing)} of {len(paths)} missing): "
                                  "check the path and the {first..last} range")
    if not paths:
        raise NoisecraftError(f"no .tar shards in {source}")
    return paths


class ShardImages:
    """The images of a shard set, decoded on indexing: images[idx] -> (n, C, H, W) float32 in [-1, 1]."""

    def __init__(self, paths: list[Path], shard: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 image_size: int | None, channels: int | None):
        self.paths, self.shard, self.offset, self.size = paths, shard, offset, size
        self.image_size, self.channels = image_size, channels
        self._files: OrderedDict[int, BinaryIO] = OrderedDict()

    def __len__(self) -> int:
        return len(self.shard)

    def _file(self, s: int) -> BinaryIO:
        if s in self._files:
            self._files.move_to_end(s)
        else:
            if len(self._files) >= OPEN_SHARDS:
                self._files.popitem(last=False)[1].close()
            self._files[s] = open(self.paths[s], "rb")
        return self._files[s]

    def array(self, i: int) -> np.ndarray:
        """Sample i as uint8 (H, W, C)."""
        s, offset = int(self.shard[i]), int(self.offset[i])
        f = self._file(s)
        f.seek(offset)
        img = _decode(io.BytesIO(f.read(int(self.size[i]))), self.image_size)
        if img is None:
            raise NoisecraftError(f"the image at byte {offset} of {self.paths[s]} is not readable: "
                                  "rewrite that shard without it")
        return to_array(img, self.image_size, self.channels)

    def __getitem__(self, idx) -> torch.Tensor:
        rows = torch.as_tensor(idx).reshape(-1).tolist()
        arrays = deque(self.array(i) for i in rows)
        if len({a.shape[:2] for a in arrays}) > 1:
            raise NoisecraftError(f"images in {self.paths[0].parent} differ in size: pass image_size to resize them")
        return stack_arrays(arrays, self.channels)

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()


def _member_text(tf: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    return tf.extractfile(info).read().decode("utf-8", errors="replace").strip()


def _samples(path: Path):
    """The samples of one shard in member order: {"image": (offset, size), "cls": int, "txt": str}, each
    key optional. WebDataset writes a sample's members next to each other, so a new key ends a sample."""
    key, sample = None, {}
    try:
        with tarfile.open(path, mode="r:") as tf:          # "r:" refuses compressed tars: they cannot seek
            for info in tf:
                if not info.isfile():
                    continue
                folder, name = posixpath.split(info.name)
                stem, _, kind = name.partition(".")
                if posixpath.join(folder, stem) != key:
                    if key is not None:
                        yield sample
                    key, sample = posixpath.join(folder, stem), {}
                kind = kind.lower()
                if kind in IMAGE_KINDS and "image" not in sample:
                    sample["image"] = (info.offset_data, info.size)
                elif kind == "cls":
                    text = _member_text(tf, info)
                    if not text.isdigit():
                        raise NoisecraftError(f"{path}: {info.name} holds {text[:20]!r}, not a class index: "
                                              "a .cls member is one non-negative integer")
                    sample["cls"] = int(text)
                elif kind == "txt":
                    sample["txt"] = _member_text(tf, info)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise NoisecraftError(f"{path} is not a readable tar file ({e}): shards are plain, uncompressed .tar "
                              "files (tar cf, or webdataset's ShardWriter)") from None
    if key is not None:
        yield sample


def shard_dataset(source: str, image_size: int | None, channels: int | None, lazy: bool) -> ImageData:
    """Index the shards of `source`; lazy: images decode on indexing, else all are decoded now."""
    paths = shard_paths(source)
    shard, offset, size, labels = array("i"), array("q"), array("q"), array("q")
    captions: list[str | None] = []
    no_image = 0
    for s, path in enumerate(paths):
        for sample in _samples(path):
            if "image" not in sample:
                no_image += 1
                continue
            shard.append(s)
            offset.append(sample["image"][0])
            size.append(sample["image"][1])
            labels.append(sample.get("cls", -1))
            captions.append(sample.get("txt"))
    if not shard:
        raise NoisecraftError(f"no images found in the {len(paths)} shard(s) of {source} (looked for members "
                              f"ending in {', '.join(IMAGE_EXTENSIONS)})")
    if no_image:
        warnings.warn(f"skipped {no_image} sample(s) without an image in {source}", stacklevel=3)

    label_array = np.frombuffer(labels, dtype=np.int64)
    label_tensor, class_names = None, None
    if (label_array >= 0).any():
        if (label_array < 0).any():
            raise NoisecraftError(f"{int((label_array < 0).sum())} sample(s) in {source} have no .cls while others "
                                  "do: give every sample a class, or none")
        label_tensor = torch.from_numpy(label_array.copy())
        class_names = [str(k) for k in range(int(label_array.max()) + 1)]
    caption_list = None
    if any(c is not None for c in captions):
        missing = sum(c is None for c in captions)
        if missing:
            warnings.warn(f"{missing} sample(s) in {source} have no caption and train as unconditional", stacklevel=3)
        caption_list = [c or "" for c in captions]
    images = ShardImages(paths, np.frombuffer(shard, dtype=np.int32), np.frombuffer(offset, dtype=np.int64),
                         np.frombuffer(size, dtype=np.int64), image_size, channels)
    if not lazy:
        rows = deque(images.array(i) for i in range(len(images)))
        images.close()
        if image_size is None and len({a.shape[:2] for a in rows}) > 1:
            raise NoisecraftError(f"images in {source} differ in size: pass image_size to resize them")
        images = stack_arrays(rows, channels)
    return ImageData(images, label_tensor, class_names, source, captions=caption_list)
