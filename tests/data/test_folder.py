import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from noisecraft.data import load_dataset
from noisecraft.data.folder import list_images
from noisecraft.errors import NoisecraftError


def _save(path, mode, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def _in_range(x):
    return x.dtype == torch.float32 and float(x.min()) >= -1 and float(x.max()) <= 1


def test_class_subfolders_and_mixed_modes(tmp_path):
    _save(tmp_path / "cats" / "a.png", "RGB", (10, 10), (255, 0, 0))
    _save(tmp_path / "cats" / "b.bmp", "L", (10, 10), 0)
    _save(tmp_path / "dogs" / "c.PNG", "RGBA", (10, 10), (0, 0, 255, 0))    # fully transparent -> white
    rgb = load_dataset(str(tmp_path), channels=3)
    assert rgb.images.shape == (3, 3, 10, 10) and _in_range(rgb.images)
    assert rgb.class_names == ["cats", "dogs"] and rgb.labels.tolist() == [0, 0, 1] and rgb.labels.dtype == torch.int64
    assert rgb.images[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0] and float(rgb.images[1].max()) == -1.0
    assert float(rgb.images[2].min()) == 1.0 and rgb.name == str(tmp_path) and rgb.skipped == 0
    grey = load_dataset(tmp_path, channels=1, image_size=4)
    assert grey.images.shape == (3, 1, 4, 4) and _in_range(grey.images)
    assert grey.images[0, 0, 0, 0].item() == pytest.approx(76 / 127.5 - 1)  # ITU-R 601 luma of pure red
    assert load_dataset(tmp_path).images.shape == (3, 3, 10, 10)           # mixed grey/RGB: RGB natively


def test_grey_folder_stays_grey_and_unlabelled_when_files_sit_at_top(tmp_path):
    _save(tmp_path / "x.png", "L", (6, 6), 255)
    _save(tmp_path / "sub" / "y.gif", "L", (6, 6), 0)
    d = load_dataset(str(tmp_path))
    assert d.images.shape == (2, 1, 6, 6) and d.labels is None and d.class_names is None


def test_non_square_images_are_centre_cropped(tmp_path):
    arr = np.zeros((6, 12, 3), np.uint8)
    arr[:, :3] = (255, 0, 0)
    arr[:, 3:9] = (0, 255, 0)
    arr[:, 9:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    Image.fromarray(arr.transpose(1, 0, 2)).save(tmp_path / "tall.png")
    d = load_dataset(str(tmp_path), image_size=3)
    assert d.images.shape == (2, 3, 3, 3)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 3, 3)
    assert torch.allclose(d.images[1], green)                              # wide.png sorts after tall.png
    assert d.images[0, 1].min() > 0.5 and d.images[0, 0].max() < 0.5       # tall: the green middle, rows blend


def test_sizes_must_agree_unless_resized(tmp_path):
    _save(tmp_path / "a.png", "L", (8, 8), 0)
    _save(tmp_path / "b.png", "L", (12, 6), 0)
    with pytest.raises(NoisecraftError, match="differ in size .*b.png is 12x6.*pass image_size"):
        load_dataset(str(tmp_path))
    d = load_dataset(str(tmp_path), image_size=16)                          # up- and downsampled
    assert d.images.shape == (2, 1, 16, 16) and torch.all(d.images == -1)


def test_truncated_png_among_good_ones_is_skipped_with_a_warning(tmp_path):
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    good = (tmp_path / "0.png").read_bytes()
    (tmp_path / "3.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file.*3.png"):
        d = load_dataset(str(tmp_path))
    assert d.skipped == 1 and d.images.shape == (3, 3, 32, 32) and _in_range(d.images)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_class_indices_do_not_shift_when_a_class_is_unreadable(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_text("not an image")
    _save(tmp_path / "b" / "ok.png", "L", (4, 4), 0)
    with pytest.warns(UserWarning):
        d = load_dataset(str(tmp_path))
    assert d.class_names == ["a", "b"] and d.labels.tolist() == [1]


def test_listing_is_sorted_recursive_and_ignores_hidden_and_other_files(tmp_path):
    for rel in ("b/2.JPG", "a/z/1.webp", "a/0.tiff", "c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    for rel in (".cache/x.png", "__MACOSX/._c.png", "a/.hidden.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    os.symlink(tmp_path, tmp_path / "a" / "loop")                           # must not recurse forever
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/0.tiff", "a/z/1.webp", "b/2.JPG", "c.png"]


@pytest.mark.parametrize("setup, match", [
    (lambda p: p / "missing", "unknown data source"),
    (lambda p: (p / "f.png").write_bytes(b"x") and p / "f.png", "is a file: give a folder"),
    (lambda p: (p / "readme.txt").write_text("x") and p, r"no images found in .*\(looked for .png, .jpg"),
    (lambda p: [(p / f"{i}.png").write_text("text") for i in range(2)] and p, "none of the 2 image files"),
])
def test_bad_folders(tmp_path, setup, match):
    with pytest.raises(NoisecraftError, match=match):
        load_dataset(str(setup(tmp_path)))


def test_folder_has_no_test_split(tmp_path):
    _save(tmp_path / "a.png", "L", (4, 4), 0)
    assert len(load_dataset(str(tmp_path), split="all").images) == 1
    with pytest.raises(NoisecraftError, match="no 'test' split"):
        load_dataset(str(tmp_path), split="test")


def test_captions_from_metadata_jsonl_and_sidecar_files(tmp_path):
    import json
    import warnings as w
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a red square"}) + "\n\n"
                                             + json.dumps({"file_name": "b.png", "text": "another"}) + "\n")
    (tmp_path / "c.txt").write_text("from a sidecar\n")
    with pytest.warns(UserWarning, match="1 image"):
        data = load_dataset(tmp_path)
    assert data.captions == ["a red square", "another", "from a sidecar", ""]
    (tmp_path / "d.txt").write_text("fourth")
    with w.catch_warnings():
        w.simplefilter("error")
        assert load_dataset(tmp_path).captions[-1] == "fourth"


def test_folder_without_captions_has_none(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    assert load_dataset(tmp_path).captions is None


def test_broken_metadata_line_is_a_clear_error(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(NoisecraftError, match="line 1 is not a JSON object with file_name and text"):
        load_dataset(tmp_path)
