import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from noisecraft.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_user_error(code, err, match):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    assert "Traceback" not in err


def test_sample_writes_pngs_grid_and_metadata(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, _ = run(["sample", "--model", tiny_model_dir, "--n", 3, "--seed", 7, "--steps", 5,   # sampler auto
                           "--out", out, "--quiet", "--gif", tmp_path / "r.gif"], capsys)
    assert code == 0 and "3 images" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png", "grid.png"]
    meta = Image.open(out / "0002.png").text
    assert meta["seed"] == "9" and meta["sampler"] == "unipc" and meta["steps"] == "5" and meta["model"] == str(tiny_model_dir)
    gif = Image.open(tmp_path / "r.gif")
    assert gif.n_frames == 5


def test_image_i_uses_seed_s_plus_i_whatever_the_batch(tiny_model_dir, tmp_path, capsys):
    run(["sample", "--model", tiny_model_dir, "--n", 4, "--seed", 10, "--steps", 4, "--batch-size", 3,
         "--out", tmp_path / "a", "--quiet"], capsys)
    run(["sample", "--model", tiny_model_dir, "--n", 1, "--seed", 13, "--steps", 4, "--out", tmp_path / "b", "--quiet"], capsys)
    a = np.asarray(Image.open(tmp_path / "a" / "0003.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "0000.png"))
    assert np.array_equal(a, b)


def test_forward_writes_strip_and_schedule_plot(tmp_path, capsys):
    code, _, err = run(["forward", "--data", "digits", "--n", 2, "--t", "0,500,999", "--out", tmp_path], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "forward.png").size[0] > 4 * 64 and (tmp_path / "schedule.png").stat().st_size > 1000


def test_forward_of_an_image_file(tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    code, _, err = run(["forward", "--image", tmp_path / "in.png", "--size", 16, "--out", tmp_path / "o"], capsys)
    assert code == 0, err


def test_models_lists_the_shipped_digits_model(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "digits" in [line.split()[0] for line in out.splitlines()]


def test_train_from_the_cli_and_a_truncated_png_is_skipped_with_a_count(tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(data / f"{i}.png")
    good = (data / "0.png").read_bytes()
    (data / "bad.png").write_bytes(good[: len(good) // 2])
    code, out, err = run(["train", "--data", data, "--out", tmp_path / "m", "--max-steps", 2, "--batch-size", 4,
                          "--quiet", "--sample-every", 0], capsys)
    assert code == 0, err
    assert "skipped 1 unreadable image" in err and (tmp_path / "m" / "model.safetensors").exists()


def test_train_and_sample_with_bf16_and_the_precision_in_the_metadata(tmp_path, capsys):
    code, _, err = run(["train", "--out", tmp_path / "m", "--max-steps", 2, "--batch-size", 8, "--precision", "bf16",
                        "--quiet", "--sample-every", 0], capsys)
    assert code == 0, err
    code, _, err = run(["sample", "--model", tmp_path / "m", "--n", 2, "--steps", 3, "--precision", "bf16",
                        "--out", tmp_path / "s", "--quiet"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "s" / "0001.png").text["precision"] == "bf16"


def _non_images(tmp_path):
    d = tmp_path / "notimages"
    d.mkdir()
    (d / "a.png").write_text("this is not a png")
    (d / "b.jpg").write_text("nor is this")
    return d


def _mismatched_model(src, tmp_path):
    dst = tmp_path / "mismatch"
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    config["unet"]["base_channels"] = 48
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    return dst


def _corrupt_weights(src, tmp_path):
    dst = tmp_path / "corrupt"
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    (dst / "model.safetensors").write_bytes(b"\x00" * 100)
    return dst


BAD = {
    "missing data path": (lambda d, m: ["train", "--data", d / "nope", "--out", d / "o", "--max-steps", 1], "unknown data source"),
    "empty folder": (lambda d, m: ["train", "--data", (d / "empty").mkdir() or d / "empty", "--out", d / "o", "--max-steps", 1], "no images"),
    "folder of non-images": (lambda d, m: ["train", "--data", _non_images(d), "--out", d / "o", "--max-steps", 1], "could be read"),
    "shape mismatch": (lambda d, m: ["sample", "--model", _mismatched_model(m, d), "--out", d / "o"], "does not match"),
    "corrupt weights": (lambda d, m: ["sample", "--model", _corrupt_weights(m, d), "--out", d / "o"], "not a readable safetensors"),
    "steps 0": (lambda d, m: ["sample", "--model", m, "--steps", 0, "--out", d / "o"], "steps must be between"),
    "negative seed": (lambda d, m: ["sample", "--model", m, "--seed", -1, "--out", d / "o"], "--seed"),
    "negative seed in train": (lambda d, m: ["train", "--seed", -3, "--out", d / "o", "--max-steps", 1], "--seed"),
    "unknown model": (lambda d, m: ["sample", "--model", "no-such-model", "--out", d / "o"], "unknown model"),
    "unknown sampler": (lambda d, m: ["sample", "--model", m, "--sampler", "magic", "--out", d / "o"], "unknown sampler"),
    "bad device": (lambda d, m: ["sample", "--model", m, "--device", "tpu", "--out", d / "o"], "--device"),
    "bad precision": (lambda d, m: ["sample", "--model", m, "--precision", "fp16", "--out", d / "o"], "--precision"),
    "bad precision in train": (lambda d, m: ["train", "--precision", "int8", "--out", d / "o", "--max-steps", 1],
                               "--precision"),
    "bf16 for a baseline": (lambda d, m: ["train", "--model", "vae", "--precision", "bf16", "--out", d / "o",
                                          "--max-steps", 1], "diffusion models only"),
    "bf16 sampling of a gan": (lambda d, m: ["sample", "--model", "digits-gan", "--precision", "bf16", "--out", d / "o"],
                               "diffusion models only"),
    "not an int": (lambda d, m: ["sample", "--model", m, "--n", "many", "--out", d / "o"], "--n"),
    "class on unconditional": (lambda d, m: ["sample", "--model", m, "--class", "3", "--out", d / "o"], "unconditional"),
    "bad t": (lambda d, m: ["forward", "--t", "0,2000", "--out", d / "o"], "--t"),
    "missing image": (lambda d, m: ["forward", "--image", d / "none.png", "--out", d / "o"], "does not exist"),
    "no stop condition": (lambda d, m: ["train", "--out", d / "o"], "say when to stop"),
    "no tuned grid": (lambda d, m: ["sample", "--model", m, "--spacing", "tuned", "--steps", 7, "--out", d / "o"],
                      "noisecraft tune"),
    "bad grid": (lambda d, m: ["sample", "--model", m, "--spacing", "999,abc", "--out", d / "o"], "comma-separated"),
    "rising grid": (lambda d, m: ["sample", "--model", m, "--spacing", "10,999", "--out", d / "o"], "strictly decreasing"),
    "unknown spacing": (lambda d, m: ["sample", "--model", m, "--spacing", "wavy", "--out", d / "o"], "unknown spacing"),
    "bad threshold": (lambda d, m: ["sample", "--model", m, "--dynamic-threshold", 5, "--out", d / "o"], "quantile"),
    "tune a stochastic sampler": (lambda d, m: ["tune", "--model", m, "--sampler", "euler_a", "--n", 2], "deterministic"),
    "tune bad steps": (lambda d, m: ["tune", "--model", m, "--steps", "5,x"], "--steps"),
    "learned without tuning": (lambda d, m: ["sample", "--model", m, "--sampler", "learned", "--out", d / "o"],
                               "--sampler learned"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tiny_model_dir, tmp_path, capsys):
    make_argv, match = BAD[case]
    code, _, err = run(make_argv(tmp_path, tiny_model_dir), capsys)
    assert_user_error(code, err, match)
    assert not (tmp_path / "o").exists()


def test_tune_saves_a_grid_that_sample_uses(tiny_model_dir, tmp_path, capsys):
    import shutil
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    code, out, _ = run(["tune", "--model", model, "--sampler", "unipc", "--steps", "3", "--n", 4,
                        "--reference-steps", 20, "--quiet"], capsys)
    assert code == 0 and "saved to" in out
    assert list(json.loads((model / "grids.json").read_text())["grids"]["unipc"]) == ["3"]
    code, out, _ = run(["sample", "--model", model, "--steps", 3, "--n", 2, "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 0
    meta = Image.open(tmp_path / "o" / "0000.png").text
    assert (meta["sampler"], meta["steps"], meta["spacing"]) == ("unipc", "3", "tuned")    # auto took the tuned grid


def test_tune_learned_saves_coefficients_that_sample_uses(tiny_model_dir, tmp_path, capsys):
    import shutil
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    code, out, _ = run(["tune", "--model", model, "--sampler", "learned", "--steps", "2", "--n", 4,
                        "--reference-steps", 20, "--max-evals", 5, "--quiet"], capsys)
    assert code == 0 and "saved to" in out
    saved = json.loads((model / "grids.json").read_text())
    assert [len(row) for row in saved["coefficients"]["learned"]["2"]] == [2, 3]
    code, out, _ = run(["sample", "--model", model, "--sampler", "learned", "--steps", 2, "--n", 2,
                        "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 0
    meta = Image.open(tmp_path / "o" / "0000.png").text
    assert (meta["sampler"], meta["steps"], meta["spacing"]) == ("learned", "2", "tuned")


@pytest.mark.parametrize("args, label", [(["--class", "3"], "3"), (["--prompt", "a handwritten 7"], "7"),
                                         (["--prompt", "a 2", "--negative-prompt", "a 5"], "2"), (["--prompt", ""], None)])
def test_class_model_samples_a_class_named_or_prompted(tiny_class_model_dir, tmp_path, capsys, args, label):
    code, _, err = run(["sample", "--model", tiny_class_model_dir, "--n", 2, "--steps", 2, "--out", tmp_path / "o",
                        "--quiet", *args], capsys)
    assert code == 0, err
    meta = Image.open(tmp_path / "o" / "0001.png").text
    assert meta.get("class") == label and float(meta["guidance"]) == (3.0 if label else 1.0)


@pytest.mark.parametrize("args, match", [(["--class", "eleven"], "unknown class 'eleven'"),
                                         (["--prompt", "a cat"], "takes no free text"),
                                         (["--class", "3", "--prompt", "a 4"], "not both")])
def test_class_model_bad_class_or_prompt(tiny_class_model_dir, tmp_path, capsys, args, match):
    code, _, err = run(["sample", "--model", tiny_class_model_dir, "--out", tmp_path / "o", *args], capsys)
    assert_user_error(code, err, match)
    assert not (tmp_path / "o").exists()


def test_console_script_and_module_entry_point(tmp_path):
    for cmd in ([sys.executable, "-m", "noisecraft", "sample", "--model", "nope", "--out", str(tmp_path)],):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: unknown model") and "Traceback" not in r.stderr


def test_sample_runs_a_diffusers_pipeline_folder(tmp_path, capsys):
    from tests.test_interop import small_pipeline

    folder = small_pipeline(tmp_path / "pipe")
    code, out, err = run(["sample", "--model", folder, "--n", 2, "--sampler", "ddim", "--steps", 3,
                          "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["0000.png", "0001.png", "grid.png"]
    assert Image.open(tmp_path / "o" / "0000.png").size == (8, 8)
    assert Image.open(tmp_path / "o" / "0001.png").text["model"] == str(folder)


@pytest.mark.parametrize("argv", [
    ["upscale", "--image", "LOW", "--steps", 3],
    ["edit", "--image", "FULL", "--strength", 0.5, "--steps", 4],
    ["inpaint", "--image", "FULL", "--box", "0,0,4,8", "--steps", 3],
    ["tune", "--sampler", "unipc", "--steps", 3, "--n", 8, "--reference-steps", 20, "--max-evals", 10],
    ["eval", "--data", "digits", "--n", 4, "--size", 8, "--no-domain"],
])
def test_every_command_takes_a_diffusers_folder(tmp_path, capsys, monkeypatch, argv):
    from tests.test_interop import small_pipeline

    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path / "cache"))
    folder = small_pipeline(tmp_path / "pipe")
    inputs = {"LOW": _digit_png(tmp_path / "low.png", 4, "RGB"), "FULL": _digit_png(tmp_path / "full.png", 8, "RGB")}
    argv = [inputs.get(a, a) if isinstance(a, str) else a for a in argv]
    if argv[0] in ("upscale", "edit", "inpaint"):
        argv += ["--out", tmp_path / "o"]
    code, out, err = run([*argv, "--model", folder, "--quiet"], capsys)
    assert code == 0, err
    if argv[0] == "tune":
        assert (folder / "grids.json").is_file()
    elif argv[0] == "eval":
        assert json.loads(out)["n"] == 4
    else:
        assert Image.open(tmp_path / "o" / "0000.png").size == (8, 8)


def test_export_writes_a_diffusers_folder_once_and_sample_reads_it(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    code, stdout, err = run(["export", "--model", tiny_model_dir, "--format", "diffusers", "--out", out], capsys)
    assert code == 0 and "DDPMPipeline.from_pretrained" in stdout, err
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "unet"]
    code, _, err = run(["sample", "--model", out, "--n", 1, "--steps", 2, "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run(["export", "--model", tiny_model_dir, "--out", out], capsys)
    assert_user_error(code, err, "not an empty folder")


@pytest.mark.parametrize("argv, match", [(["--format", "onnx"], "unknown --format 'onnx'"),
                                         (["--model", "google/ddpm-cifar10-32"], "Hugging Face Hub")])
def test_export_bad_input_is_one_line_exit_2(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["export", "--model", "digits", *argv, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, match)
    assert not (tmp_path / "o").exists()


def test_a_broken_diffusers_folder_is_one_line_exit_2(tmp_path, capsys):
    from tests.test_interop import small_pipeline

    folder = small_pipeline(tmp_path / "pipe")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    code, _, err = run(["sample", "--model", folder, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, "diffusers could not load")
    assert not (tmp_path / "o").exists()


def _digit_png(path, size=16, mode="L"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size, size, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    Image.fromarray(arr if mode != "L" else arr[..., 0], mode).save(path)
    return path


def test_upscale_edit_inpaint_write_pngs_with_metadata(tiny_model_dir, tmp_path, capsys):
    _digit_png(tmp_path / "low.png", 8)
    code, _, err = run(["upscale", "--model", tiny_model_dir, "--image", tmp_path / "low.png", "--steps", 3,
                        "--out", tmp_path / "up", "--quiet"], capsys)
    assert code == 0, err
    up = Image.open(tmp_path / "up" / "0000.png")
    assert up.size == (16, 16) and up.text["factor"] == "2" and up.text["method"] == "project"
    low = np.asarray(Image.open(tmp_path / "low.png"), dtype=np.float64)
    assert np.abs(np.asarray(up, dtype=np.float64).reshape(8, 2, 8, 2).mean((1, 3)) - low).max() < 1.5   # consistent

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _digit_png(imgs / "b.png", 16, "RGBA")
    _digit_png(imgs / "a.png", 16, "RGB")
    code, _, err = run(["edit", "--model", tiny_model_dir, "--image", imgs, "--strength", 0.3, "--steps", 10,
                        "--seed", 5, "--out", tmp_path / "ed", "--quiet"], capsys)
    assert code == 0, err
    meta = Image.open(tmp_path / "ed" / "0001.png").text
    assert meta["input"] == "b.png" and meta["seed"] == "6" and meta["strength"] == "0.3" and meta["start_t"] == "299"
    assert sorted(p.name for p in (tmp_path / "ed").iterdir()) == ["0000.png", "0001.png", "grid.png"]

    code, _, err = run(["inpaint", "--model", tiny_model_dir, "--image", tmp_path / "low.png", "--box", "4,0,8,8",
                        "--steps", 10, "--jump", 3, "--resample", 2, "--out", tmp_path / "in", "--quiet"], capsys)
    assert code == 0 and "resized" in err                                           # 8x8 -> the model's 16x16
    out = np.asarray(Image.open(tmp_path / "in" / "0000.png"), dtype=int)
    big = np.asarray(Image.open(tmp_path / "low.png").resize((16, 16), Image.BILINEAR), dtype=int)
    assert np.abs(out[:, :8] - big[:, :8]).max() <= 1                                # known pixels kept


def test_edit_at_strength_zero_returns_the_input_pixels(tiny_model_dir, tmp_path, capsys):
    src = _digit_png(tmp_path / "x.png")
    code, _, err = run(["edit", "--model", tiny_model_dir, "--image", src, "--strength", 0, "--out", tmp_path / "o",
                        "--quiet"], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "0000.png")), np.asarray(Image.open(src)))


@pytest.mark.parametrize("args, match", [
    (["edit", "--strength", 1.5], "strength must be a number in [0, 1]"),
    (["inpaint", "--box", "0,0,17,4"], "does not fit a 16x16 image"),
    (["inpaint", "--box", "0,0"], "four whole numbers"),
    (["inpaint"], "give the region to fill"),
    (["inpaint", "--box", "0,0,8,8", "--reconstruction", "-1"], "weight must be a number >= 0"),
    (["inpaint", "--mask", "SMALLMASK"], "the mask is 8x8 but the image is 16x16"),
    (["inpaint", "--mask", "BLACKMASK"], "selects no pixels"),
    (["upscale", "--factor", 3], "--factor must be >= 2 and divide"),
    (["upscale", "--method", "magic"], "unknown --method"),
])
def test_task_user_errors_are_one_line(tiny_model_dir, tmp_path, capsys, args, match):
    src = _digit_png(tmp_path / "x.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "small.png")
    Image.new("L", (16, 16), 0).save(tmp_path / "black.png")
    args = [{"SMALLMASK": tmp_path / "small.png", "BLACKMASK": tmp_path / "black.png"}.get(a, a) for a in args]
    code, _, err = run([*args, "--model", tiny_model_dir, "--image", src, "--out", tmp_path / "o"], capsys)
    assert_user_error(code, err, match)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["upscale", "edit", "inpaint"])
def test_task_with_a_missing_or_unreadable_image_is_one_line(tiny_model_dir, tmp_path, capsys, command):
    (tmp_path / "bad.png").write_bytes(b"junk")
    for image, match in ((tmp_path / "nope.png", "does not exist"), (tmp_path / "bad.png", "not a readable image")):
        code, _, err = run([command, "--model", tiny_model_dir, "--image", image, "--box", "0,0,2,2", "--out", tmp_path / "o"]
                           if command == "inpaint" else
                           [command, "--model", tiny_model_dir, "--image", image, "--out", tmp_path / "o"], capsys)
        assert_user_error(code, err, match)


def test_upscale_with_a_super_resolution_model_uses_its_factor(tiny_sr_model_dir, tmp_path, capsys):
    _digit_png(tmp_path / "low.png", 4)
    code, _, err = run(["upscale", "--model", tiny_sr_model_dir, "--image", tmp_path / "low.png", "--steps", 3,
                        "--sampler", "ddim", "--out", tmp_path / "up", "--quiet"], capsys)
    assert code == 0, err
    up = Image.open(tmp_path / "up" / "0000.png")
    assert up.size == (16, 16) and up.text["factor"] == "4"
    code, _, err = run(["sample", "--model", tiny_sr_model_dir, "--n", 1, "--out", tmp_path / "s", "--quiet"], capsys)
    assert_user_error(code, err, "super-resolution model")
    code, _, err = run(["train", "--cond", "superres", "--sr-factor", 3, "--out", tmp_path / "t"], capsys)
    assert_user_error(code, err, "--sr-factor must be at least 2")
