import gzip
import struct

import numpy as np
import pytest
import torch

from noisecraft.data import SOURCES, describe_sources, load_dataset, sources
from noisecraft.errors import NoisecraftError


def _in_range(x):
    return x.dtype == torch.float32 and float(x.min()) >= -1 and float(x.max()) <= 1


def test_registry_lists_the_builtin_sources():
    assert tuple(SOURCES) == ("digits", "fashion-mnist", "faces", "shapes", "emoji")
    assert [name for name, _ in describe_sources()] == [*SOURCES, "DIR", "SHARDS"]


def test_digits_splits_are_a_fixed_stratified_holdout():
    train, test, everything = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert everything.images.shape == (1797, 1, 8, 8) and _in_range(everything.images)
    assert float(everything.images.min()) == -1.0 and float(everything.images.max()) == 1.0
    assert (len(train.images), len(test.images)) == (1442, 355)
    per_class = torch.bincount(everything.labels)
    assert torch.equal(torch.bincount(test.labels), per_class // 5)       # every 5th of each class
    assert train.labels.dtype == torch.int64 and train.class_names == [str(k) for k in range(10)]
    # The two splits partition "all": each image of "all" is in exactly one of them.
    key = lambda d: sorted(tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(d.images, d.labels))
    assert sorted(key(train) + key(test)) == key(everything)
    assert torch.equal(load_dataset("digits", split="test").images, test.images)   # deterministic


def test_digits_resized_and_rgb():
    d = load_dataset("digits", image_size=16, channels=3)
    assert d.images.shape == (1442, 3, 16, 16) and _in_range(d.images)
    assert torch.equal(d.images[:, 0], d.images[:, 2])


def test_faces_are_the_first_hundred_crops():
    d = load_dataset("faces")
    assert d.images.shape == (100, 1, 25, 25) and _in_range(d.images)
    assert d.labels is None and d.class_names is None and d.name == "faces"
    assert len(load_dataset("faces", split="all").images) == 100
    with pytest.raises(NoisecraftError, match="no 'test' split"):
        load_dataset("faces", split="test")


def _idx_bytes(arr, magic):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in arr.shape) + arr.astype(np.uint8).tobytes()


def _write_fashion(folder, gz=True, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr, magic in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x803),
                                 ("labels-idx1-ubyte", np.arange(n) % 10, 0x801)):
            data = _idx_bytes(arr, magic)
            if gz:
                (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / f"{prefix}-{kind}").write_bytes(data)


@pytest.fixture
def fashion_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECRAFT_DATA", str(tmp_path))
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", tmp_path / "not-installed")
    return tmp_path


def test_fashion_mnist_from_idx_gz_files(fashion_env):
    _write_fashion(fashion_env)
    train = load_dataset("fashion-mnist")
    assert train.images.shape == (12, 1, 28, 28) and _in_range(train.images)
    assert train.labels.tolist() == [k % 10 for k in range(12)] and train.labels.dtype == torch.int64
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert len(load_dataset("fashion-mnist", split="test").images) == 5
    everything = load_dataset("fashion-mnist", split="all")
    assert len(everything.images) == 17 and torch.equal(everything.images[:12], train.images)
    assert load_dataset("fashion-mnist", split="test", image_size=32, channels=3).images.shape == (5, 3, 32, 32)


def test_fashion_mnist_uncompressed_in_a_subfolder(fashion_env):
    _write_fashion(fashion_env / "fashion-mnist", gz=False)
    assert load_dataset("fashion-mnist", split="test").images.shape == (5, 1, 28, 28)


def test_fashion_mnist_truncated_file_is_named(fashion_env):
    _write_fashion(fashion_env)
    path = fashion_env / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(NoisecraftError, match="train-images-idx3-ubyte.gz is truncated"):
        load_dataset("fashion-mnist")
    path.write_bytes(gzip.compress(data)[:200])                             # the gzip stream itself cut short
    with pytest.raises(NoisecraftError, match="cannot read .*train-images"):
        load_dataset("fashion-mnist")


def test_fashion_mnist_count_mismatch(fashion_env):
    _write_fashion(fashion_env)
    (fashion_env / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(4), 0x801)))
    with pytest.raises(NoisecraftError, match="5 images but 4 labels"):
        load_dataset("fashion-mnist", split="test")


def test_fashion_mnist_missing_says_where_and_how(fashion_env):
    with pytest.raises(NoisecraftError, match="NOISECRAFT_DATA.*apt install dataset-fashion-mnist") as e:
        load_dataset("fashion-mnist")
    assert str(fashion_env) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), "unknown split"),
    (dict(channels=2), "channels must be 1 or 3"),
    (dict(image_size=0), "positive integer"),
    (dict(image_size=2.5), "positive integer"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(NoisecraftError, match=match):
        load_dataset("digits", **kwargs)


@pytest.mark.parametrize("source", ["no-such-source", ""])
def test_unknown_source(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NoisecraftError, match="unknown data source .*digits, fashion-mnist, faces, shapes, emoji or an image folder"):
        load_dataset(source)
