"""Latent diffusion: `train --latent VAE_DIR` trains a UNet on a VAE's latents; the model directory carries
the VAE, and load_model + sample / `noisecraft sample` return decoded images."""
import json
import shutil

import pytest
import torch
from PIL import Image

from noisecraft import NoisecraftError, load_model, sample
from noisecraft.samplers import as_images
from noisecraft.data import load_dataset
from noisecraft.interop import export_diffusers
from noisecraft.tasks.edit import edit
from noisecraft.tasks.inpaint import inpaint
from noisecraft.tasks.superres import upscale
from noisecraft.train.latent import encode_dataset, latent_scale
from noisecraft.train.loop import TrainOptions, train
from tests.test_cli import assert_user_error, run

QUIET = dict(log=lambda m: None, progress=False)


def latent_options(vae_dir, out, **kw) -> TrainOptions:
    return TrainOptions(**{"data": "digits", "out": str(out), "latent": str(vae_dir), "batch_size": 16, "max_steps": 4,
                           "checkpoint_every": 2, "sample_every": 0} | kw)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A barely trained spatial-latent VAE (16x16 grey -> 4x4x4) on digits."""
    out = tmp_path_factory.mktemp("latent") / "vae"
    return train(TrainOptions(data="digits", out=str(out), model="vae", preset="tiny-spatial", lr=1e-3, batch_size=32,
                              max_steps=20, checkpoint_every=20, sample_every=0), **QUIET)


@pytest.fixture(scope="module")
def latent_dir(vae_dir):
    return train(latent_options(vae_dir, vae_dir.parent / "ldm", sample_every=4), **QUIET)


def test_the_model_directory_holds_the_vae_and_a_unit_variance_scale(vae_dir, latent_dir):
    config = json.loads((latent_dir / "config.json").read_text())
    assert config["vae"]["latent_channels"] == 4 and config["unet"]["in_channels"] == 4
    assert config["unet"]["image_size"] == 4 and (latent_dir / "vae.safetensors").is_file()
    latents = encode_dataset(load_model(vae_dir), load_dataset("digits", image_size=16, channels=1).images)
    assert latents.shape == (1442, 4, 4, 4)                                   # the train split
    assert config["latent_scale"] == pytest.approx(latent_scale(latents), rel=1e-5)
    assert float((latents * config["latent_scale"]).std()) == pytest.approx(1.0, rel=1e-4)
    assert (latent_dir / "samples" / "step-0000004.png").is_file()           # the grid is decoded: 16x16 images


def test_load_model_and_sample_give_decoded_images(latent_dir):
    model = load_model(latent_dir)
    assert model.config.image_shape == (1, 16, 16) and model.config.unet_shape == (4, 4, 4)
    x_t = torch.randn(2, 4, 4, 4)
    assert model(x_t, torch.tensor([10.0, 500.0])).shape == x_t.shape          # the protocol is on latents
    seen = []
    x = sample(model, (3, 1, 16, 16), steps=3, generator=[torch.Generator().manual_seed(s) for s in range(3)],
               callback=lambda i, x_t, x0: seen.append(x_t.shape))
    assert x.shape == (3, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert seen == [(3, 4, 4, 4)] * 3
    one = sample(model, (1, 1, 16, 16), steps=3, generator=[torch.Generator().manual_seed(2)])
    assert torch.allclose(one[0], x[2], atol=1e-5)                              # per-image noise still holds


def test_wrong_shapes_and_pixel_tasks_are_clear_errors(latent_dir):
    model = load_model(latent_dir)
    with pytest.raises(NoisecraftError, match=r"shape=\(batch, 1, 16, 16\)"):
        sample(model, (2, 4, 4, 4), steps=2)
    with pytest.raises(NoisecraftError, match="latents"):
        sample(model, (2, 1, 16, 16), steps=2, x_T=torch.randn(2, 1, 16, 16))
    with pytest.raises(NoisecraftError, match="dynamic_threshold"):
        sample(model, (2, 1, 16, 16), steps=2, dynamic_threshold=0.99)
    images = torch.zeros(2, 1, 16, 16)
    with pytest.raises(NoisecraftError, match="latent diffusion model"):
        inpaint(model, images, torch.ones(2, 1, 16, 16), steps=2)
    with pytest.raises(NoisecraftError, match="latent diffusion model"):
        upscale(model, torch.zeros(2, 1, 4, 4), 4, steps=2)
    with pytest.raises(NoisecraftError, match="latent diffusion model"):
        export_diffusers(latent_dir, latent_dir.parent / "exported")


def test_edit_works_in_latent_space(latent_dir):
    model = load_model(latent_dir)
    images = load_dataset("digits", image_size=16, channels=1).images[:2]
    gens = [torch.Generator().manual_seed(s) for s in range(2)]
    out = edit(model, images, 0.5, steps=4, generator=gens)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(edit(model, images, 0.0), images)


def test_cli_sample_and_the_directory_works_after_a_move(latent_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(latent_dir, moved)
    code, _, err = run(["sample", "--model", moved, "--n", 2, "--steps", 3, "--out", tmp_path / "s", "--quiet",
                        "--gif", tmp_path / "r.gif"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["0000.png", "0001.png", "grid.png"]
    assert Image.open(tmp_path / "s" / "0000.png").size == (16, 16)
    same = sample(load_model(latent_dir), (1, 1, 16, 16), steps=3, generator=[torch.Generator().manual_seed(0)])
    assert torch.allclose(sample(load_model(moved), (1, 1, 16, 16), steps=3,
                                 generator=[torch.Generator().manual_seed(0)]), same)
    code, _, err = run(["inpaint", "--model", moved, "--image", tmp_path / "s" / "0000.png", "--box", "0,0,8,8",
                        "--out", tmp_path / "i", "--quiet"], capsys)
    assert_user_error(code, err, "latent diffusion model")


def test_resume_continues_as_an_uninterrupted_run(vae_dir, tmp_path):
    whole = train(latent_options(vae_dir, tmp_path / "whole"), **QUIET)
    train(latent_options(vae_dir, tmp_path / "half", max_steps=2), **QUIET)
    half = train(latent_options(vae_dir, tmp_path / "half", resume=True), **QUIET)
    a, b = load_model(whole), load_model(half)
    for (k, v), w in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(NoisecraftError, match="latent"):
        train(TrainOptions(data="digits", out=str(tmp_path / "half"), batch_size=16, max_steps=6, checkpoint_every=2,
                           sample_every=0, resume=True), **QUIET)


def test_option_errors(vae_dir, tmp_path, capsys):
    vector_vae = train(TrainOptions(data="digits", out=str(tmp_path / "vector"), model="vae", batch_size=16,
                                    max_steps=1, checkpoint_every=1, sample_every=0), **QUIET)
    cases = [
        (["--latent", tmp_path / "nowhere"], "not a folder"),
        (["--latent", vector_vae], "vector latent"),
        (["--latent", vae_dir, "--model", "vae"], "drop it for --model vae"),
        (["--latent", vae_dir, "--cond", "superres"], "--cond superres"),
        (["--latent", vae_dir, "--preset", "base"], "fewer levels"),
    ]
    for extra, match in cases:
        code, _, err = run(["train", "--data", "digits", "--out", tmp_path / "x", "--max-steps", 1, "--quiet", *extra],
                           capsys)
        assert_user_error(code, err, match)
    train(TrainOptions(data="digits", out=str(tmp_path / "pixel"), batch_size=16, max_steps=1, checkpoint_every=1,
                       sample_every=0), **QUIET)
    code, _, err = run(["train", "--data", "digits", "--out", tmp_path / "y", "--max-steps", 1, "--quiet",
                        "--latent", tmp_path / "pixel"], capsys)
    assert_user_error(code, err, "not a VAE")


def test_as_images_decodes_a_latent_models_callback_tensors(latent_dir):
    """The GIF and the web UI's live preview show x_t and x0_pred through as_images: images, not latents."""
    model = load_model(latent_dir)
    seen = []
    sample(model, (2, 1, 16, 16), steps=2, generator=[torch.Generator().manual_seed(s) for s in range(2)],
           callback=lambda i, x_t, x0: seen.append((as_images(model, x_t), as_images(model, x0))))
    for x_t, x0 in seen:
        assert x_t.shape == x0.shape == (2, 1, 16, 16) and x0.abs().max() <= 1
    pixels = torch.zeros(2, 1, 4, 4)
    assert as_images(load_model("digits"), pixels) is pixels
