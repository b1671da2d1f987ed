"""Bringing images to a model's shape: channels, size, value range [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pil_to_array(img: Image.Image, channels: int | None) -> np.ndarray:
    """PIL image -> uint8 (H, W, C). Transparency is composited on white; grey <-> RGB by
    luminance (ITU-R 601, PIL's "L" conversion) or replication."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    native = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
    mode = "L" if (channels or native) == 1 else "RGB"
    arr = np.asarray(img.convert(mode))
    return arr[..., None] if arr.ndim == 2 else arr


def resize_square_pil(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then a centre crop; LANCZOS (antialiased) in both directions."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.LANCZOS)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_unit_range(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """[0, max_value] -> [-1, 1] float32."""
    return (x.float() / max_value * 2 - 1).clamp(-1, 1)


def convert_tensor(x: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> requested size and channels. Upsampling is bilinear (smooth
    digits rather than blocks); downsampling is antialiased bilinear."""
    if channels is not None and channels != x.shape[1]:
        if channels == 3 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif channels == 1 and x.shape[1] == 3:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        else:
            raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")
    if image_size is not None and x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=image_size < max(x.shape[-2:]))
    return x.clamp(-1, 1).contiguous()
