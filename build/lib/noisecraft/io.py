"""Writing files so that nothing is ever left half-written: temp file in the same folder,
fsync, then an atomic rename over the target."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def png_bytes(image: Image.Image, metadata: dict | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(path: str | Path, image: Image.Image, metadata: dict | None = None) -> Path:
    """PNG with text chunks (model, sampler, seed, ...) so the image can be regenerated."""
    return atomic_write_bytes(path, png_bytes(image, metadata))


def save_gif(path: str | Path, frames: list[Image.Image], duration_ms: int = 60, final_hold_ms: int = 1500) -> Path:
    buf = io.BytesIO()
    durations = [duration_ms] * (len(frames) - 1) + [final_hold_ms]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return atomic_write_bytes(path, buf.getvalue())
