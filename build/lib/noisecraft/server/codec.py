"""Images on the wire: base64 PNG (or any format PIL reads) in, base64 PNG with text metadata out.
Vertex AI carries JSON only, so images travel as base64 strings (DESIGN.md §7)."""
from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, ImageOps

from noisecraft.data.folder import DECODE_ERRORS
from noisecraft.errors import NoisecraftError
from noisecraft.io import png_bytes
from noisecraft.viz import to_pil

DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def decode_image(text: str, what: str, max_side: int) -> Image.Image:
    """A base64 string (a data: URL prefix is allowed) -> the decoded, upright image. Its size is read from the
    header and checked against max_side before any pixel is decoded, so a decompression bomb costs nothing."""
    if not isinstance(text, str) or not text.strip():
        raise NoisecraftError(f"{what} is empty: send the image as a base64-encoded PNG string")
    try:
        data = base64.b64decode(DATA_URL.sub("", text.strip()), validate=True)
    except (binascii.Error, ValueError):
        raise NoisecraftError(f"{what} is not valid base64: encode the image file's bytes with base64 "
                              "(e.g. `base64 -w0 in.png`)") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if max(img.size) > max_side:
                raise NoisecraftError(f"{what} is {img.width}x{img.height}: images may be at most {max_side} pixels "
                                      "on a side; shrink it first")
            img.load()
            return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError:
        raise NoisecraftError(f"{what} is far too large (PIL refuses it as a decompression bomb): images may be at "
                              f"most {max_side} pixels on a side") from None
    except DECODE_ERRORS:
        raise NoisecraftError(f"{what} is base64 but not an image PIL can read: send a PNG or JPEG") from None


def encode_png(image, metadata: dict) -> str:
    """One image tensor (C, H, W) in [-1, 1] -> base64 PNG carrying `metadata` as text chunks."""
    return base64.b64encode(png_bytes(to_pil(image), metadata)).decode("ascii")



def pil_to_b64(image: Image.Image) -> str:
    """A PIL image as base64 PNG, the form requests carry images in (the web UI sends its uploads this way)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
