"""Bringing images to a model's shape: value range [-1, 1], channels, square size.

Resampling choice, the same for tensors and decoded files: downsampling is antialiased
(antialiased bilinear for tensors, LANCZOS for PIL images) so small images do not alias;
upsampling is plain bilinear (align_corners=False; PIL's BILINEAR is the same filter),
which gives smooth strokes rather than blocks and, unlike LANCZOS or bicubic, never
overshoots the value range. Grey <-> RGB: RGB -> grey is ITU-R 601 luma (PIL's "L"),
grey -> RGB replicates; transparency is composited on white first.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LUMA_601 = (0.299, 0.587, 0.114)
GREY_MODES = frozenset({"1", "L", "LA", "La", "F", "I", "I;16", "I;16L", "I;16B", "I;16N"})


def to_unit_range(x: np.ndarray, max_value: float) -> torch.Tensor:
    """An array in [0, max_value] -> a new float32 tensor in [-1, 1]."""
    t = torch.from_numpy(x.astype(np.float32))            # astype copies, so in-place below is safe
    return t.div_(max_value / 2).sub_(1).clamp_(-1, 1)


def convert_tensor(x: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> `channels` (1 or 3) and image_size x image_size; None keeps."""
    if channels is not None and channels != x.shape[1]:
        if (x.shape[1], channels) == (1, 3):
            x = x.expand(-1, 3, -1, -1)
        elif (x.shape[1], channels) == (3, 1):
            x = (x * x.new_tensor(LUMA_601).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (N, 1, H, W)
        else:
            raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        downsampling = image_size < max(x.shape[-2:])
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=downsampling)
    return x.clamp(-1, 1).contiguous()


def flatten_pil(img: Image.Image, channels: int | None) -> Image.Image:
    """Any decoded image -> mode "L" (1 channel) or "RGB" (3); None keeps the image's own count."""
    native = 1 if img.mode in GREY_MODES or (img.mode in ("P", "PA") and _grey_palette(img)) else 3
    if img.mode.startswith("I"):
        # 16-bit greyscale (PNG opens as I;16 or I): PIL's convert would clip at 255, not scale.
        scaled = np.clip(np.asarray(img, dtype=np.float32) / 257, 0, 255).round().astype(np.uint8)
        img = Image.fromarray(scaled)
    if "A" in img.getbands() or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    return img.convert("L" if (channels or native) == 1 else "RGB")


def _grey_palette(img: Image.Image) -> bool:
    """Whether every colour a palette image uses is a grey (GIFs store grey images this way)."""
    palette = img.getpalette() or []
    used = img.getcolors(256) or []
    return all(palette[3 * i] == palette[3 * i + 1] == palette[3 * i + 2] for _, i in used if 3 * i + 2 < len(palette))


def resize_square_pil(img: Image.Image, size: int) -> Image.Image:
    """The centre square of side min(w, h), resized to size x size."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = img.crop((left, top, left + side, top + side))   # crop first: no filter reaches outside
    if side == size:
        return square
    return square.resize((size, size), Image.LANCZOS if side > size else Image.BILINEAR)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """An "L" or "RGB" image -> a writable uint8 (H, W, C) array (torch refuses read-only ones)."""
    arr = np.array(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
