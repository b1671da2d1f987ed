import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft import NoisecraftError
from noisecraft.data import load_dataset


def test_digits_splits_are_disjoint_stratified_and_scaled():
    train, test, everything = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert everything.images.shape == (1797, 1, 8, 8) and everything.images.dtype == torch.float32
    assert len(train.images) + len(test.images) == 1797
    assert float(everything.images.min()) == -1.0 and float(everything.images.max()) == 1.0
    assert torch.equal(torch.bincount(test.labels), torch.bincount(everything.labels) // 5)  # a fifth of each class
    flat = lambda d: {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(d.images, d.labels)}
    assert len(flat(train) & flat(test)) <= 3                     # only genuine duplicates in the source
    assert train.class_names == [str(i) for i in range(10)]


def test_digits_resized_and_rgb():
    d = load_dataset("digits", image_size=16, channels=3)
    assert d.images.shape[1:] == (3, 16, 16) and d.images.abs().max() <= 1
    assert torch.equal(d.images[:, 0], d.images[:, 2])


def test_faces():
    d = load_dataset("faces")
    assert d.images.shape == (100, 1, 25, 25) and d.labels is None


def _write_idx(path, arr, magic, truncate=0):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) - truncate])


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x803)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 0x801)
    monkeypatch.setenv("NOISECRAFT_DATA", str(tmp_path))
    return tmp_path


def test_fashion_mnist_from_idx_files(fashion_dir):
    train = load_dataset("fashion-mnist")
    assert train.images.shape == (12, 1, 28, 28) and train.labels.tolist()[:3] == [0, 1, 2]
    assert train.class_names[7] == "Sneaker"
    assert len(load_dataset("fashion-mnist", split="all").images) == 17
    assert load_dataset("fashion-mnist", split="test", image_size=32).images.shape == (5, 1, 32, 32)


def test_fashion_mnist_truncated_or_missing(fashion_dir, monkeypatch, tmp_path_factory):
    _write_idx(fashion_dir / "train-images-idx3-ubyte.gz", np.zeros((12, 28, 28)), 0x803, truncate=100)
    with pytest.raises(NoisecraftError, match="truncated"):
        load_dataset("fashion-mnist")
    monkeypatch.setenv("NOISECRAFT_DATA", str(tmp_path_factory.mktemp("empty")))
    with pytest.raises(NoisecraftError, match="NOISECRAFT_DATA"):
        load_dataset("fashion-mnist", split="test")


def _save(path, mode, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_folder_with_class_subfolders_and_mixed_modes(tmp_path):
    _save(tmp_path / "cats" / "a.png", "RGB", (10, 10), (255, 0, 0))
    _save(tmp_path / "cats" / "b.png", "L", (10, 10), 0)
    _save(tmp_path / "dogs" / "c.PNG", "RGBA", (10, 10), (0, 0, 255, 0))      # fully transparent -> white
    d = load_dataset(str(tmp_path), channels=3)
    assert d.images.shape == (3, 3, 10, 10) and d.class_names == ["cats", "dogs"] and d.labels.tolist() == [0, 0, 1]
    assert d.images[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0] and d.images[2].min() == 1.0
    grey = load_dataset(str(tmp_path), channels=1, image_size=4)
    assert grey.images.shape == (3, 1, 4, 4)


def test_folder_sizes_must_agree_unless_resized(tmp_path):
    _save(tmp_path / "a.png", "L", (8, 8), 0)
    _save(tmp_path / "b.png", "L", (12, 6), 0)
    with pytest.raises(NoisecraftError, match="different sizes"):
        load_dataset(str(tmp_path))
    d = load_dataset(str(tmp_path), image_size=4)
    assert d.images.shape == (2, 1, 4, 4) and d.labels is None


def test_truncated_png_among_good_ones_is_skipped_and_counted(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", "L", (8, 8), i * 50)
    good = (tmp_path / "0.png").read_bytes()
    (tmp_path / "3.png").write_bytes(good[: len(good) // 2])
    d = load_dataset(str(tmp_path))
    assert d.skipped == 1 and len(d.images) == 3


@pytest.mark.parametrize("setup, match", [
    (lambda p: p / "missing", "unknown data source"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
    (lambda p: p, "no images found"),
    (lambda p: (p / "x.png").write_text("not an image") and p, "could be read"),
])
def test_bad_sources(tmp_path, setup, match):
    with pytest.raises(NoisecraftError, match=match):
        load_dataset(str(setup(tmp_path)))


def test_bad_split_size_channels():
    with pytest.raises(NoisecraftError, match="split"):
        load_dataset("digits", split="val")
    with pytest.raises(NoisecraftError, match="channels"):
        load_dataset("digits", channels=2)
    with pytest.raises(NoisecraftError, match="size"):
        load_dataset("digits", image_size=0)
