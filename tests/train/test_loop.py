import json

import pytest
import torch
from safetensors.torch import load_file

from noisecraft import NoisecraftError, load_model
from noisecraft.train import loop
from noisecraft.train.checkpoint import list_checkpoints
from noisecraft.train.loop import TrainOptions, train


def opts(tmp_path, name="run", **kw):
    base = dict(data="digits", out=str(tmp_path / name), preset="tiny", batch_size=16, max_steps=20,
                checkpoint_every=10, sample_every=0, seed=0)
    return TrainOptions(**(base | kw))


def quiet_train(o):
    return train(o, log=lambda m: None, progress=False)


def latest_state(out):
    """The newest checkpoint's tensors."""
    return load_file(str(list_checkpoints(out)[0]))


def test_short_training_lowers_the_loss(tmp_path):
    out = quiet_train(opts(tmp_path, max_steps=150, batch_size=32, checkpoint_every=150))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 15
    assert sum(r["loss"] for r in log[-3:]) / 3 < 0.5 * log[0]["loss"]


def test_model_directory_loads_with_ema_weights(tmp_path):
    out = quiet_train(opts(tmp_path))
    assert {"config.json", "model.safetensors", "checkpoint", "train_log.jsonl"} <= {p.name for p in out.iterdir()}
    model = load_model(out)
    state = latest_state(out)
    for k, v in model.net.state_dict().items():
        torch.testing.assert_close(v, state[f"ema.{k}"])
    assert model.config.data == "digits" and model.schedule.num_timesteps == 1000


def test_same_seed_same_weights_and_resume_is_exact(tmp_path):
    straight = quiet_train(opts(tmp_path, "a", max_steps=20))
    again = quiet_train(opts(tmp_path, "b", max_steps=20))
    quiet_train(opts(tmp_path, "c", max_steps=10))
    resumed = quiet_train(opts(tmp_path, "c", max_steps=20, resume=True))
    ref = latest_state(straight)
    for other in (again, resumed):
        got = latest_state(other)
        for k in ref:
            if k.startswith(("model.", "ema.", "optim.")):
                assert torch.equal(ref[k], got[k]), k


def test_adamw_is_fused_on_the_cpu_and_resumes_channels_last_weights_exactly():
    """Moments stored contiguous (as a checkpoint holds them) and loaded for channels_last weights: without
    match_layouts() the fused kernel would pair each weight element with another element's moments."""
    def conv():
        torch.manual_seed(0)
        return torch.nn.Conv2d(8, 4, 3).to(memory_format=torch.channels_last)

    def grads(net, i):
        net.weight.grad = torch.arange(net.weight.numel(), dtype=torch.float32).reshape(net.weight.shape).mul(i + 1)
        net.bias.grad = torch.ones(4)

    straight, resumed = conv(), conv()
    opt = loop.adamw(straight.parameters(), 1e-2, 0.0)
    assert opt.param_groups[0]["fused"]
    for i in range(2):
        grads(straight, i)
        opt.step()
    saved = opt.state_dict()
    saved["state"] = {k: {n: v.contiguous().clone() for n, v in s.items()} for k, s in saved["state"].items()}
    resumed.load_state_dict(straight.state_dict())
    again = loop.adamw(resumed.parameters(), 1e-2, 0.0)
    again.load_state_dict(saved)
    loop.match_layouts(again)
    for i in range(2, 4):
        for net, o in ((straight, opt), (resumed, again)):
            grads(net, i)
            o.step()
    assert torch.equal(straight.weight, resumed.weight)


def test_refuses_to_overwrite_a_model_without_resume(tmp_path):
    quiet_train(opts(tmp_path, max_steps=2))
    with pytest.raises(NoisecraftError, match="--resume"):
        quiet_train(opts(tmp_path, max_steps=2))


def test_resume_with_changed_options_or_nothing_to_resume(tmp_path):
    with pytest.raises(NoisecraftError, match="nothing to resume"):
        quiet_train(opts(tmp_path, resume=True))
    quiet_train(opts(tmp_path, max_steps=2))
    with pytest.raises(NoisecraftError, match="batch_size"):
        quiet_train(opts(tmp_path, max_steps=4, batch_size=8, resume=True))


def _nan_on_calls(monkeypatch, bad):
    """Make diffusion_loss NaN on the given (1-based) calls."""
    real, calls = loop.diffusion_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) in bad else value
    monkeypatch.setattr(loop, "diffusion_loss", loss)


def test_nan_batches_are_skipped_and_counted(tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, {5, 6, 15})
    out = quiet_train(opts(tmp_path, max_steps=20, log_every=10))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped"], r["skipped_total"]) for r in log] == [(10, 2, 2), (20, 1, 3)]
    assert all(r["img_s"] > 0 and r["steps_s"] > 0 and r["loss"] == r["loss"] for r in log)
    state = latest_state(out)
    assert all(torch.isfinite(state[k]).all() for k in state if k.startswith(("model.", "ema.", "optim.")))
    from safetensors import safe_open
    with safe_open(str(list_checkpoints(out)[0]), "pt") as f:
        progress = json.loads(f.metadata()["noisecraft"])["progress"]
    assert progress["step"] == 20 and progress["skipped"] == 3 and progress["pos"] == 23 * 16


def test_nan_loss_in_a_row_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    reference = quiet_train(opts(tmp_path, "ref", max_steps=10))
    _nan_on_calls(monkeypatch, set(range(13, 100)))
    with pytest.raises(NoisecraftError, match=r"loss nan for 3 batches in a row after step 12; the last good "
                                              r"checkpoint \(step 10\) is kept"):
        quiet_train(opts(tmp_path, max_steps=30, max_bad_steps=3))
    out = tmp_path / "run"
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    kept, clean = latest_state(out), latest_state(reference)
    assert kept.keys() == clean.keys() and [k for k in kept if not torch.equal(kept[k], clean[k])] == []  # a clean 10-step run
    assert all(torch.isfinite(p).all() for p in load_model(out).parameters())


def test_init_starts_from_a_model_and_refuses_another_network(tmp_path):
    first = quiet_train(opts(tmp_path, "a", max_steps=20))
    # A learning rate so small that one step leaves the weights where they started.
    tuned = quiet_train(opts(tmp_path, "b", max_steps=1, lr=1e-12, init=str(first)))
    fresh = quiet_train(opts(tmp_path, "c", max_steps=1, lr=1e-12))
    start, a, b = (load_model(d).net.state_dict() for d in (first, tuned, fresh))
    for k in start:
        torch.testing.assert_close(a[k], start[k])
    assert not all(torch.allclose(b[k], start[k]) for k in start)
    with pytest.raises(NoisecraftError, match="unet, cond differ"):
        quiet_train(opts(tmp_path, "d", max_steps=1, cond="class", init=str(first)))
    assert not (tmp_path / "d").exists()                  # nothing half-written
    with pytest.raises(NoisecraftError, match="drop it for --model vae"):
        quiet_train(opts(tmp_path, "e", max_steps=1, model="vae", init=str(first)))
    with pytest.raises(NoisecraftError, match="not a noisecraft diffusion model"):
        quiet_train(opts(tmp_path, "f", max_steps=1, init="digits-vae"))      # the shipped VAE


@pytest.mark.parametrize("kw, match", [
    ({"max_steps": None}, "say when to stop"),
    ({"batch_size": 0}, "batch-size"),
    ({"lr": -1.0}, "--lr"),
    ({"preset": "huge"}, "unknown preset"),
    ({"model": "flow"}, "unknown --model"),
    ({"model": "gan", "cond": "class"}, "diffusion models only"),
    ({"prediction": "score"}, "unknown prediction"),
    ({"seed": -1}, "seed"),
    ({"data": "/no/such/folder"}, "unknown data source"),
])
def test_bad_options(tmp_path, kw, match):
    with pytest.raises(NoisecraftError, match=match):
        quiet_train(opts(tmp_path, **kw))
    assert not (tmp_path / "run").exists()                # nothing half-written


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_other_parameterizations_and_class_conditioning_train(tmp_path, prediction):
    out = quiet_train(opts(tmp_path, max_steps=3, prediction=prediction, cond="class"))
    model = load_model(out)
    assert model.prediction == prediction and model.config.unet.num_classes == 10
    assert model.config.class_names == [str(i) for i in range(10)]


def _captioned_folder(root):
    """16 coloured squares with captions in metadata.jsonl."""
    from PIL import Image
    root.mkdir()
    rows = []
    for i in range(16):
        colour = ("red", "blue")[i % 2]
        Image.new("RGB", (16, 16), colour).save(root / f"{i:02d}.png")
        rows.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"a {colour} square"}))
    (root / "metadata.jsonl").write_text("\n".join(rows))
    return root


def test_text_conditioning_trains_and_samples_from_a_prompt(tmp_path):
    from noisecraft import sample
    from noisecraft.guidance import condition
    data = _captioned_folder(tmp_path / "captioned")
    out = quiet_train(opts(tmp_path, data=str(data), max_steps=3, cond="text", batch_size=8))
    model = load_model(out)
    assert model.config.cond == "text" and model.config.text_encoder == "minilm"
    assert model.config.unet.context_dim == 384 and model.config.guidance > 1
    c = condition(model, 2, prompt="a red square")
    x = sample(model, (2, *model.config.image_shape), steps=2, cond=c.cond, guidance_scale=model.config.guidance,
               negative_cond=c.negative, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 16, 16) and bool(torch.isfinite(x).all())


def test_text_conditioning_needs_captions(tmp_path):
    with pytest.raises(NoisecraftError, match="needs captions"):
        quiet_train(opts(tmp_path, cond="text"))
    assert not (tmp_path / "run").exists()


def test_super_resolution_trains_on_box_averaged_inputs(tmp_path):
    out = quiet_train(opts(tmp_path, max_steps=2, cond="superres", sr_factor=2))
    model = load_model(out)
    assert model.config.cond == "superres" and model.config.sr_factor == 2 and model.config.guidance == 1.0
    assert model.config.unet.low_res_channels == 1 and model.net.stem.in_channels == 2
    with pytest.raises(NoisecraftError, match="sr_factor"):
        quiet_train(opts(tmp_path, max_steps=4, cond="superres", sr_factor=4, resume=True))


@pytest.mark.parametrize("factor", [1, 3])
def test_super_resolution_factor_must_divide_the_image(tmp_path, factor):
    with pytest.raises(NoisecraftError, match="--sr-factor must be at least 2 and divide"):
        quiet_train(opts(tmp_path, cond="superres", sr_factor=factor))
    assert not (tmp_path / "run").exists()
