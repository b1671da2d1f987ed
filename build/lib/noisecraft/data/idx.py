"""Reading LeCun's idx format (MNIST, Fashion-MNIST), gzipped or not, with numpy only."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from noisecraft.errors import NoisecraftError


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes -> uint8 array. Layout: magic 0x000008DD (0x08 = ubyte,
    DD = ndim), then ndim big-endian uint32 sizes, then the data in C order."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:           # EOFError: gzip stream cut short
        raise NoisecraftError(f"cannot read {path} ({e}): download it again") from None
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != 0x0800 | ndim:
        raise NoisecraftError(f"{path} is not an idx file of {ndim}-D unsigned bytes: download it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected, found = math.prod(dims), len(raw) - header
    if found != expected:
        problem = "is truncated" if found < expected else "has trailing data"
        raise NoisecraftError(f"{path} {problem} ({found} data bytes, its header says {expected}): "
                              "download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
