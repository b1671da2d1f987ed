"""Training, saving, loading and sampling the baselines through the CLI."""
import json

import pytest
import torch
from PIL import Image

from noisecraft import NoisecraftError, load_model
from noisecraft.baselines.autoregressive import PixelCNN
from noisecraft.baselines.gan import Generator
from noisecraft.baselines.vae import VAE
from noisecraft.cli import main
from noisecraft.train.loop import TrainOptions, train
from tests.test_cli import assert_user_error, run

KINDS = {"vae": VAE, "gan": Generator, "autoregressive": PixelCNN}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One barely trained model directory per family, trained through the CLI."""
    root = tmp_path_factory.mktemp("baselines")
    dirs = {}
    for family in KINDS:
        with pytest.raises(SystemExit) as e:
            main(["train", "--model", family, "--data", "digits", "--out", str(root / family), "--max-steps", "4",
                  "--batch-size", "16", "--checkpoint-every", "4", "--sample-every", "0", "--quiet"])
        assert e.value.code == 0
        dirs[family] = root / family
    return dirs


@pytest.mark.parametrize("family", list(KINDS))
def test_train_writes_a_model_directory_that_loads(trained, family):
    out = trained[family]
    assert {"config.json", "model.safetensors", "checkpoint", "train_log.jsonl"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == family and config["data"] == "digits" and config[family]["image_size"] == 16
    model = load_model(out)
    assert type(model) is KINDS[family] and not model.training
    assert model.model_config.family == family and model.config.image_shape == (1, 16, 16)
    if family == "gan":                         # the directory holds the EMA generator only
        assert all(k.startswith(("project.", "net.")) for k in model.state_dict())


@pytest.mark.parametrize("family", list(KINDS))
def test_sample_writes_pngs_grid_and_metadata(trained, family, tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, _ = run(["sample", "--model", trained[family], "--n", 3, "--seed", 7, "--batch-size", 2,
                           "--out", out, "--quiet"], capsys)
    assert code == 0 and "3 images" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png", "grid.png"]
    with Image.open(out / "0001.png") as img:
        assert img.size == (16, 16) and img.text["seed"] == "8" and img.text["family"] == family
    again = tmp_path / "again"                        # image 1 = seed 8 on its own, whatever the batch
    run(["sample", "--model", trained[family], "--n", 1, "--seed", 8, "--out", again, "--quiet"], capsys)
    assert (again / "0000.png").read_bytes() == (out / "0001.png").read_bytes()


def test_sampler_options_are_an_error_for_a_baseline(trained, tmp_path, capsys):
    for extra in (["--steps", 10], ["--sampler", "ddim"], ["--class", "3"], ["--guidance", 2]):
        code, _, err = run(["sample", "--model", trained["gan"], "--out", tmp_path / "o", *extra], capsys)
        assert_user_error(code, err, "applies to diffusion models only")
        assert extra[0] in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, match", [
    (["--model", "flow"], "unknown --model"),
    (["--model", "gan", "--preset", "base"], "unknown preset"),       # vae has a base preset (latent diffusion)
    (["--model", "gan", "--cond", "class"], "--cond applies to diffusion models only"),
    (["--model", "autoregressive", "--prediction", "v_prediction"], "--prediction applies"),
    (["--model", "vae", "--grad-accum", 2], "--grad-accum applies"),
])
def test_bad_train_options_are_one_line_errors(argv, match, tmp_path, capsys):
    code, _, err = run(["train", "--out", tmp_path / "run", "--max-steps", 2, *argv], capsys)
    assert_user_error(code, err, match)
    assert not (tmp_path / "run").exists()


def test_broken_baseline_directories_are_one_line_errors(trained, tmp_path, capsys):
    config = json.loads((trained["vae"] / "config.json").read_text())
    for name, change, match in [("family", {"family": "flow"}, "names family 'flow'"),
                                ("section", {"vae": None}, "has no 'vae' section"),
                                ("key", {"vae": config["vae"] | {"depth": 3}}, "unknown vae config keys"),
                                ("shape", {"vae": config["vae"] | {"latent_dim": 8}}, "does not match")]:
        broken = tmp_path / name
        broken.mkdir()
        (broken / "config.json").write_text(json.dumps(config | change))
        (broken / "model.safetensors").write_bytes((trained["vae"] / "model.safetensors").read_bytes())
        code, _, err = run(["sample", "--model", broken, "--out", tmp_path / "o"], capsys)
        assert_user_error(code, err, match)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    """GAN: two networks in one optimizer, BN statistics, EMA and the z stream all come back exactly."""
    base = dict(model="gan", data="digits", batch_size=16, checkpoint_every=3, sample_every=0, seed=2, lr=2e-4)
    quiet = dict(log=lambda m: None, progress=False)
    train(TrainOptions(out=str(tmp_path / "straight"), max_steps=6, **base), **quiet)
    train(TrainOptions(out=str(tmp_path / "split"), max_steps=3, **base), **quiet)
    with pytest.raises(NoisecraftError, match="already holds a model"):
        train(TrainOptions(out=str(tmp_path / "split"), max_steps=6, **base), **quiet)
    with pytest.raises(NoisecraftError, match="different model"):
        train(TrainOptions(out=str(tmp_path / "split"), max_steps=6, resume=True, **(base | {"model": "vae", "lr": 1e-3})),
              **quiet)
    train(TrainOptions(out=str(tmp_path / "split"), max_steps=6, resume=True, **base), **quiet)
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "split")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_same_seed_same_weights_and_a_falling_loss(tmp_path):
    quiet = dict(log=lambda m: None, progress=False)
    base = dict(model="vae", data="digits", batch_size=32, max_steps=40, checkpoint_every=40,
                sample_every=0, log_every=10, lr=1e-2, warmup_steps=5)
    one = train(TrainOptions(out=str(tmp_path / "one"), **base), **quiet)
    two = train(TrainOptions(out=str(tmp_path / "two"), **base), **quiet)
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    log = [json.loads(line) for line in (one / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] - 0.3 and log[-1]["family"] == "vae"


@pytest.mark.parametrize("argv", [
    ["upscale", "--image", "IMG", "--out", "OUT"], ["edit", "--image", "IMG", "--out", "OUT"],
    ["inpaint", "--image", "IMG", "--box", "0,0,4,4", "--out", "OUT"], ["tune", "--steps", 3],
    ["eval", "--data", "digits", "--n", 4], ["export", "--format", "diffusers", "--out", "OUT"],
])
def test_diffusion_only_commands_refuse_a_baseline_in_one_line(trained, tmp_path, capsys, argv):
    Image.new("L", (16, 16)).save(tmp_path / "in.png")
    argv = [{"IMG": tmp_path / "in.png", "OUT": tmp_path / "o"}.get(a, a) for a in argv]
    code, _, err = run([*argv, "--model", trained["vae"]], capsys)
    assert_user_error(code, err, "is a vae model")
    assert "needs a diffusion model" in err and not (tmp_path / "o").exists()


def test_the_server_reports_a_baseline_as_not_servable(trained):
    from noisecraft.server.models import ModelStore

    store = ModelStore({"vae": str(trained["vae"])}, device="cpu")
    store.load()
    assert not store.ready and "is a vae model: serving needs a diffusion model" in store.error
