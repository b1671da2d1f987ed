"""WebDataset tar shards: naming, indexing, decoding, and training from them equals training from
the same images in a folder."""
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from noisecraft.data import load_dataset
from noisecraft.data.shards import ShardImages, expand_braces
from noisecraft.errors import NoisecraftError
from noisecraft.train.checkpoint import list_checkpoints
from noisecraft.train.loop import TrainOptions, train


def _png(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards_and_folder(tmp_path):
    """20 images (greyscale PNGs and RGB JPEGs of different sizes) as a folder and as 3 shards with .cls
    and .txt members; the folder's sorted order is the shards' member order."""
    rng = np.random.default_rng(0)
    folder, shard_dir = tmp_path / "folder", tmp_path / "shards"
    folder.mkdir()
    shard_dir.mkdir()
    items = []
    for i in range(20):
        if i % 3:
            data, ext = _png(rng.integers(0, 255, (12, 12), dtype=np.uint8)), "png"
        else:
            data, ext = _png(rng.integers(0, 255, (20, 14, 3), dtype=np.uint8), "JPEG"), "jpg"
        items.append((f"{i:06d}", ext, data, i % 4, f"image number {i}"))
        (folder / f"{i:06d}.{ext}").write_bytes(data)
    for s in range(3):
        with tarfile.open(shard_dir / f"shard-{s:06d}.tar", "w") as tf:
            for key, ext, data, label, caption in items[s * 7:(s + 1) * 7]:
                _add(tf, f"{key}.{ext}", data)
                _add(tf, f"{key}.cls", str(label).encode())
                _add(tf, f"{key}.txt", caption.encode())
    return shard_dir, folder, items


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}/s-{8..10}.tar") == ["x/s-8.tar", "x/s-9.tar", "x/s-10.tar",
                                                     "y/s-8.tar", "y/s-9.tar", "y/s-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shards_give_the_folder_images_labels_and_captions(shards_and_folder):
    shard_dir, folder, items = shards_and_folder
    pattern = str(shard_dir / "shard-{000000..000002}.tar")
    for source in (pattern, str(shard_dir)):
        data = load_dataset(source, image_size=8, channels=1)
        same = load_dataset(folder, image_size=8, channels=1)
        assert torch.equal(data.images, same.images) and data.images.shape == (20, 1, 8, 8)
        assert data.labels.tolist() == [it[3] for it in items] and data.class_names == ["0", "1", "2", "3"]
        assert data.captions == [it[4] for it in items]
    lazy = load_dataset(pattern, image_size=8, channels=3, lazy=True)
    assert isinstance(lazy.images, ShardImages) and len(lazy.images) == 20
    rows = torch.tensor([19, 0, 7])
    assert torch.equal(lazy.images[rows], load_dataset(folder, image_size=8, channels=3).images[rows])


def test_training_from_shards_equals_training_from_the_folder(shards_and_folder, tmp_path):
    shard_dir, folder, _ = shards_and_folder
    outs = []
    for name, data in (("from-shards", str(shard_dir / "shard-{000000..000002}.tar")), ("from-folder", str(folder))):
        outs.append(train(TrainOptions(data=data, out=str(tmp_path / name), preset="tiny", batch_size=6, max_steps=8,
                                       checkpoint_every=8, sample_every=0), log=lambda m: None, progress=False))
    a, b = (load_file(str(list_checkpoints(o)[0])) for o in outs)
    assert [k for k in a if k.startswith(("model.", "ema.", "optim.")) and not torch.equal(a[k], b[k])] == []


def test_bad_shard_sources_are_one_line_errors(shards_and_folder, tmp_path):
    shard_dir, _, _ = shards_and_folder
    with pytest.raises(NoisecraftError, match=r"shard-000003.tar does not exist \(1 of 4 missing\)"):
        load_dataset(str(shard_dir / "shard-{000000..000003}.tar"))
    with tarfile.open(tmp_path / "zipped.tar", "w:gz") as tf:
        _add(tf, "a.png", _png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(NoisecraftError, match="not a readable tar file .*uncompressed"):
        load_dataset(str(tmp_path / "zipped.tar"))
    with tarfile.open(tmp_path / "badcls.tar", "w") as tf:
        _add(tf, "a.png", _png(np.zeros((4, 4), np.uint8)))
        _add(tf, "a.cls", b"cat")
    with pytest.raises(NoisecraftError, match="not a class index"):
        load_dataset(str(tmp_path / "badcls.tar"))
    with tarfile.open(tmp_path / "textonly.tar", "w") as tf:
        _add(tf, "a.txt", b"no image here")
    with pytest.raises(NoisecraftError, match="no images found in the 1 shard"):
        load_dataset(str(tmp_path / "textonly.tar"))


def test_an_unreadable_image_in_a_shard_is_an_error_when_read(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "a.png", _png(np.zeros((4, 4), np.uint8)))
        _add(tf, "b.png", b"\x89PNG not really")
    data = load_dataset(str(tmp_path / "s.tar"), image_size=4, channels=1, lazy=True)
    assert data.images[torch.tensor([0])].shape == (1, 1, 4, 4)
    with pytest.raises(NoisecraftError, match="the image at byte .* of .*s.tar is not readable"):
        data.images[torch.tensor([1])]


def test_some_samples_without_a_class_is_an_error(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "a.png", _png(np.zeros((4, 4), np.uint8)))
        _add(tf, "a.cls", b"1")
        _add(tf, "b.png", _png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(NoisecraftError, match="1 sample\\(s\\) in .* have no .cls"):
        load_dataset(str(tmp_path / "s.tar"))
