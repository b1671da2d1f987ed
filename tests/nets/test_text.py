"""The frozen text encoder (all-MiniLM-L6-v2 from its pip package) and text conditions."""
from dataclasses import replace

import pytest
import torch

from noisecraft import NoisecraftError, sample
from noisecraft.guidance import condition
from noisecraft.models import DiffusionModel, ModelConfig
from noisecraft.nets import PRESETS
from noisecraft.nets.text import TextEncoder


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_tokens=12)


def test_token_states_are_padded_and_masked(encoder):
    states, mask, truncated = encoder.encode(["a red circle", "", "a red circle"])
    assert states.shape == (3, 12, 384) and states.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask[0].sum() == 5 and mask[1].sum() == 2                 # [CLS] a red circle [SEP]; [CLS] [SEP]
    assert torch.equal(states[0], states[2]) and truncated == [False, False, False]
    other, _, _ = encoder.encode(["a blue square"])
    assert not torch.allclose(other[0, :4], states[0, :4])


def test_long_prompts_are_truncated_and_flagged(encoder):
    _, mask, truncated = encoder.encode(["a red circle left of a blue square above a green triangle in a field"])
    assert truncated == [True] and bool(mask.all())


def test_disk_cache_gives_the_same_states(tmp_path):
    a = TextEncoder(max_tokens=8, cache_dir=tmp_path).encode(["a small green square"])
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    b = TextEncoder(max_tokens=8, cache_dir=tmp_path).encode(["a small green square"])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_an_encoder_that_is_not_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NoisecraftError, match="nothing is downloaded"):
        TextEncoder(str(tmp_path / "clip-vit"))


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    config = ModelConfig(unet=replace(PRESETS["tiny"], context_dim=384), cond="text", text_encoder="minilm",
                         max_tokens=12, guidance=3.0)
    model = DiffusionModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_text_condition_and_guided_sampling(text_model):
    c = condition(text_model, 2, prompt="a red circle", negative_prompt="blurry")
    assert c.label == "a red circle" and c.cond["context"].shape == (2, 12, 384)
    assert not torch.equal(c.cond["context"], c.negative["context"])
    kw = dict(shape=(2, 1, 16, 16), steps=3, cond=c.cond, generator=torch.Generator().manual_seed(0))
    a = sample(text_model, guidance_scale=1.0, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    b = sample(text_model, guidance_scale=3.0, **kw)                 # null branch: the empty prompt
    assert not torch.allclose(a, b)


def test_text_condition_rules(text_model):
    assert condition(text_model, 1, prompt="  ").label is None        # empty prompt: unconditional
    with pytest.warns(UserWarning, match="truncated"):
        condition(text_model, 1, prompt="a red circle left of a blue square above a green triangle in a field")
    with pytest.raises(NoisecraftError, match="text-conditional"):
        condition(text_model, 1, class_=3)
    class_only = DiffusionModel(ModelConfig(unet=replace(PRESETS["tiny"], num_classes=10), cond="class"))
    with pytest.raises(NoisecraftError, match="takes no free text"):
        condition(class_only, 1, prompt="a red circle")
