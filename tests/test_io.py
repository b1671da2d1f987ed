import os

import pytest
from PIL import Image

from noisecraft.io import atomic_write_bytes, save_gif, save_png


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"first")
    atomic_write_bytes(p, b"second")
    assert p.read_bytes() == b"second" and os.listdir(p.parent) == ["f.bin"]
    mask = os.umask(0o022)
    try:
        atomic_write_bytes(p, b"third")
    finally:
        os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o644                     # as open() would create it, not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"good")

    def boom(*_):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"partial")
    assert p.read_bytes() == b"good" and os.listdir(tmp_path) == ["f.bin"]


def test_png_metadata_and_gif_frames(tmp_path):
    save_png(tmp_path / "a.png", Image.new("L", (4, 4)), {"seed": 3, "sampler": "ddim"})
    assert Image.open(tmp_path / "a.png").text == {"seed": "3", "sampler": "ddim"}
    save_gif(tmp_path / "a.gif", [Image.new("L", (4, 4), v) for v in (0, 128, 255)])
    assert Image.open(tmp_path / "a.gif").n_frames == 3
