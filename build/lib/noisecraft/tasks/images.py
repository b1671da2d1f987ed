"""Input images and masks for the image-to-image tasks: any file PIL reads, any mode (grey, RGB,
RGBA, palette, 16-bit) and size, brought to a model's channels and square size with the same
conversions as training data (noisecraft.data.transforms), with a warning when resized."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from noisecraft.data.folder import IMAGE_EXTENSIONS, _decode, list_images
from noisecraft.data.transforms import flatten_pil, resize_square_pil
from noisecraft.errors import NoisecraftError
from noisecraft.viz import from_pil


def list_inputs(path: str | Path) -> list[Path]:
    """An image file as itself, or the images in a folder in sorted order."""
    path = Path(path)
    if not path.exists():
        raise NoisecraftError(f"image {path} does not exist: give an image file or a folder of images")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise NoisecraftError(f"no images found in {path} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return files
    return [path]


def read_image(path: str | Path) -> Image.Image:
    """The decoded, upright image, or a NoisecraftError saying the file is not one."""
    img = _decode(Path(path), None)
    if img is None:
        raise NoisecraftError(f"{path} is not a readable image: give a PNG, JPEG or another file PIL can open")
    return img


def to_model_image(img: Image.Image, channels: int, size: int, name: str = "the image") -> torch.Tensor:
    """(channels, size, size) in [-1, 1]: transparency composited on white, grey <-> RGB, and the centre
    square resized (with a warning) when the image is not size x size."""
    flat = flatten_pil(img, channels)
    if flat.size != (size, size):
        warnings.warn(f"{name} is {flat.width}x{flat.height}: its centre square was resized to the model's {size}x{size}")
        flat = resize_square_pil(flat, size)
    return from_pil(flat, channels)


def parse_box(box: str, width: int, height: int) -> tuple[int, int, int, int]:
    """"x0,y0,x1,y1" in pixels of the input image, x1 and y1 exclusive, checked against its size."""
    try:
        x0, y0, x1, y1 = (int(v) for v in box.split(","))
    except ValueError:
        raise NoisecraftError(f"a box is four whole numbers x0,y0,x1,y1, got {box!r}") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise NoisecraftError(f"box {box} does not fit a {width}x{height} image: need 0 <= x0 < x1 <= {width} "
                              f"and 0 <= y0 < y1 <= {height}")
    return x0, y0, x1, y1


def box_mask(box: str, width: int, height: int) -> Image.Image:
    """A mask image ("L", white = fill) of the input's size with the box white."""
    x0, y0, x1, y1 = parse_box(box, width, height)
    arr = np.zeros((height, width), np.uint8)
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr, "L")


def read_mask(path: str | Path) -> Image.Image:
    """A mask file as "L" (white = fill; transparency counts as white)."""
    return flatten_pil(read_image(path), 1)


def to_model_mask(mask: Image.Image, width: int, height: int, size: int) -> torch.Tensor:
    """(1, size, size) float in {0, 1} from a mask of the input's size, resized as the image is.
    Pixels at least half white are filled."""
    if mask.size != (width, height):
        raise NoisecraftError(f"the mask is {mask.width}x{mask.height} but the image is {width}x{height}: "
                              "give a mask of the image's size")
    m = from_pil(resize_square_pil(mask.convert("L"), size), 1)
    m = (m >= 0).float()                                  # from_pil maps 128 .. 255 to [0.0039, 1]
    if not bool(m.any()):
        raise NoisecraftError("the mask selects no pixels to fill: white marks the region the model paints")
    return m
