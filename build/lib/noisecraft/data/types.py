"""The one value every data source returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch

SPLITS = ("train", "test", "all")


@dataclass
class ImageData:
    """A whole data set, ready for training: in memory, or (lazy tar shards) indexed and decoded per batch."""

    images: torch.Tensor                 # (N, C, H, W) float32 in [-1, 1]; tar shards loaded lazily give a
                                         # ShardImages, which decodes on indexing: images[idx] -> tensor
    labels: torch.Tensor | None          # (N,) int64, or None when the source has no labels
    class_names: list[str] | None        # class_names[label]
    name: str                            # source name, or the folder path
    skipped: int = 0                     # unreadable files left out (folders only)
    captions: list[str] | None = None    # one text per image, for text conditioning
