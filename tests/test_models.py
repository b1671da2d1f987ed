import json

import pytest
import torch

from noisecraft import NoisecraftError, load_model, sample
from noisecraft.models import list_models


def test_shipped_digits_model_loads_and_samples():
    assert "digits" in dict(list_models())
    model = load_model("digits")
    assert model.config.image_shape == (1, 16, 16) and model.prediction == "epsilon"
    assert model.schedule.num_timesteps == 1000 and not model.training
    x = sample(model, (2, 1, 16, 16), steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 16, 16) and x.abs().max() <= 1


def test_model_protocol_accepts_fractional_t(tiny_model_dir):
    model = load_model(tiny_model_dir)
    out = model(torch.randn(3, 1, 16, 16), torch.tensor([0.0, 12.5, 999.0]))
    assert out.shape == (3, 1, 16, 16)


@pytest.mark.parametrize("breakage, match", [
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "config.json").write_text("{nope"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text(json.dumps({"unet": {}})), "not a noisecraft model config"),
    (lambda d: (d / "model.safetensors").unlink(), "is missing"),
    (lambda d: (d / "model.safetensors").write_bytes(b"junk"), "not a readable safetensors"),
])
def test_broken_model_directories_are_clear_errors(tiny_model_dir, tmp_path, breakage, match):
    d = tmp_path / "m"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        (d / name).write_bytes((tiny_model_dir / name).read_bytes())
    breakage(d)
    with pytest.raises(NoisecraftError, match=match):
        load_model(d)


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(NoisecraftError, match="digits"):
        load_model("no-such-model")
