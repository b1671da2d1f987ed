"""`noisecraft eval`: one JSON object on stdout, user errors as one line and exit code 2."""
import json

import pytest
from PIL import Image

from noisecraft.data import load_dataset
from noisecraft.viz import to_pil
from tests.test_cli import assert_user_error, run


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path / "cache"))


def digits_folder(path, n):
    path.mkdir()
    for i, x in enumerate(load_dataset("digits", split="test").images[:n]):
        to_pil(x).save(path / f"{i:04d}.png")
    to_pil(x).resize((40, 40)).save(path / "grid.png")            # the contact sheet is left out
    return path


def test_eval_prints_one_json_object(tmp_path, capsys):
    folder = digits_folder(tmp_path / "gen", 12)
    code, out, err = run(["eval", "--images", folder, "--data", "digits", "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert out.count("\n") == 1 and r["n"] == r["n_real"] == r["n_fake"] == 12
    assert r["feature_network"] == "efficientnet-lite0" and r["image_size"] == 8
    for key in ("fid", "kid", "kid_std", "precision", "recall"):
        assert isinstance(r[key], float)
    assert 0.9 < r["domain"]["classifier_test_accuracy"] <= 1
    assert "warning: 12 images are fewer than the 1281 needed" in err     # reliability, stated on stderr too


def test_eval_samples_a_model_in_one_go(tiny_model_dir, tmp_path, capsys):
    code, out, err = run(["eval", "--model", tiny_model_dir, "--data", "digits", "--n", 6, "--steps", 2,
                          "--no-domain", "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 6 and r["image_size"] == 16 and "domain" not in r


@pytest.mark.parametrize("case, match", [
    ("missing", "is not a folder"),
    ("empty", "no images found"),
    ("mixed", "differ in size"),
    ("neither", "--images DIR or --model M"),
    ("weights", "does not exist"),
    ("data", "unknown data source"),
])
def test_eval_user_errors_are_one_line(case, match, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    args = ["eval", "--data", "digits", "--images", folder, "--quiet"]
    if case == "missing":
        args[4] = tmp_path / "nowhere"
    if case in ("mixed", "weights", "data"):
        Image.new("L", (8, 8)).save(folder / "a.png")
        Image.new("L", (8, 8)).save(folder / "c.png")
        Image.new("L", (16, 16)).save(folder / "b.png")
    if case == "neither":
        args = args[:3]
    if case == "weights":
        args += ["--inception-weights", tmp_path / "pt_inception.pth", "--size", 8]
    if case == "data":
        args[2] = "no-such-source"
        args += ["--size", 8]
    assert_user_error(*run(args, capsys)[::2], match)
