"""The one value every data source returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch

SPLITS = ("train", "test", "all")


@dataclass
class ImageData:
    """A whole data set in memory, ready for training (no per-item decoding later)."""

    images: torch.Tensor                 # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor | None          # (N,) int64, or None when the source has no labels
    class_names: list[str] | None        # class_names[label]
    name: str                            # source name, or the folder path
    skipped: int = 0                     # unreadable files left out (folders only)
    captions: list[str] | None = None    # one text per image, for text conditioning
