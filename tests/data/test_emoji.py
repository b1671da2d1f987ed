"""Unpacking the emoji set from an npm tarball (a small one written by the test)."""
import io
import json
import tarfile

import pytest
from PIL import Image

from noisecraft import NoisecraftError
from noisecraft.data.emoji import captions, unpack_emoji

INDEX = [
    {"name": "GRINNING FACE", "image": "1f600.png", "has_img_google": True},
    {"name": "WAVING HAND SIGN", "image": "1f44b.png", "has_img_google": True,
     "skin_variations": {"1F3FD": {"image": "1f44b-1f3fd.png", "has_img_google": True},
                         "1F3FB-1F3FF": {"image": "1f44b-1f3fb-1f3ff.png", "has_img_google": True}}},
    {"name": "NOT DRAWN BY GOOGLE", "image": "1f9ff.png", "has_img_google": False},
]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(buf, format="PNG")
    return buf.getvalue()


def make_tarball(path, index=INDEX, images=("1f600.png", "1f44b.png", "1f44b-1f3fd.png", "1f44b-1f3fb-1f3ff.png")):
    with tarfile.open(path, "w:gz") as tar:
        files = {"package/emoji.json": json.dumps(index).encode()} if index is not None else {}
        files |= {f"package/img/google/64/{name}": _png() for name in images}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_captions_name_the_emoji_and_its_skin_tone():
    assert captions(INDEX) == {
        "1f600.png": "an emoji of grinning face",
        "1f44b.png": "an emoji of waving hand sign",
        "1f44b-1f3fd.png": "an emoji of waving hand sign, medium skin tone",
        "1f44b-1f3fb-1f3ff.png": "an emoji of waving hand sign, light and dark skin tones",
    }


def test_unpack_writes_images_and_metadata(tmp_path):
    dest, count = unpack_emoji(tmp_path / "emoji", make_tarball(tmp_path / "e.tgz"))
    assert count == 4 and sorted(p.name for p in dest.glob("*.png")) == sorted(captions(INDEX))
    rows = [json.loads(line) for line in (dest / "metadata.jsonl").read_text().splitlines()]
    assert {r["file_name"]: r["text"] for r in rows} == captions(INDEX)
    assert unpack_emoji(dest, tmp_path / "missing.tgz") == (dest, 4)       # already there: left alone


@pytest.mark.parametrize("make, match", [
    (lambda p: make_tarball(p, index=None), "no package/emoji.json"),
    (lambda p: (p.write_bytes(b"not a tarball"), p)[1], "could not read"),
    (lambda p: make_tarball(p, images=()), "no 64x64"),
    (lambda p: p, "does not exist"),
])
def test_bad_tarball_is_a_clear_error_and_leaves_nothing(tmp_path, make, match):
    with pytest.raises(NoisecraftError, match=match):
        unpack_emoji(tmp_path / "emoji", make(tmp_path / "e.tgz"))
    assert not (tmp_path / "emoji").exists() and not list(tmp_path.glob(".emoji*"))


def test_an_existing_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(_png())
    with pytest.raises(NoisecraftError, match="not an unpacked emoji set"):
        unpack_emoji(tmp_path / "mine", make_tarball(tmp_path / "e.tgz"))
    assert (tmp_path / "mine" / "photo.png").exists()


def test_emoji_source_loads_the_unpacked_set_with_captions(tmp_path, monkeypatch):
    from noisecraft.data import load_dataset
    monkeypatch.setenv("NOISECRAFT_DATA", str(tmp_path))
    with pytest.raises(NoisecraftError, match="noisecraft data emoji"):
        load_dataset("emoji")
    unpack_emoji(None, make_tarball(tmp_path / "e.tgz"))
    data = load_dataset("emoji", image_size=32)
    assert data.images.shape == (4, 3, 32, 32) and sorted(data.captions) == sorted(captions(INDEX).values())
