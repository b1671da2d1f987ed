from dataclasses import replace

import pytest
import torch

from noisecraft import NoisecraftError, sample
from noisecraft.guidance import guided
from noisecraft.models import DiffusionModel, ModelConfig
from noisecraft.nets import PRESETS


@pytest.fixture(scope="module")
def class_model():
    torch.manual_seed(0)
    model = DiffusionModel(ModelConfig(unet=replace(PRESETS["tiny"], num_classes=10), cond="class")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_guided_output_is_uncond_plus_scale_times_difference_in_one_call(class_model):
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([100.0, 700.0])
    labels = torch.tensor([3, 7])
    calls = []
    hook = class_model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = guided(class_model, {"class_labels": labels}, 4.0)(x, t)
        hook.remove()
        cond = class_model(x, t, class_labels=labels)
        uncond = class_model(x, t, class_labels=torch.full_like(labels, 10))
    assert calls == [4]                                           # one batched pass for both
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_sample_with_guidance_differs_from_without(class_model):
    kw = dict(shape=(2, 1, 16, 16), steps=4, cond={"class_labels": torch.tensor([1, 2])})
    a = sample(class_model, generator=torch.Generator().manual_seed(0), guidance_scale=1.0, **kw)
    b = sample(class_model, generator=torch.Generator().manual_seed(0), guidance_scale=3.0, **kw)
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_guidance_needs_a_condition_and_a_conditional_model(class_model):
    with pytest.raises(NoisecraftError, match="needs a condition"):
        sample(class_model, (1, 1, 16, 16), steps=2, guidance_scale=2.0)
    plain = DiffusionModel(ModelConfig(unet=PRESETS["tiny"])).eval()
    with pytest.raises(NoisecraftError, match="droppable condition"):
        sample(plain, (1, 1, 16, 16), steps=2, cond={"class_labels": torch.tensor([0])}, guidance_scale=2.0)
