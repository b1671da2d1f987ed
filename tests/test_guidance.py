"""Conditions from classes, prompts and negative prompts, and classifier-free guidance."""
from dataclasses import replace

import pytest
import torch

from noisecraft import NoisecraftError, sample
from noisecraft.data.sources import FASHION_CLASSES
from noisecraft.guidance import class_condition, class_in_prompt, class_index, guided
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
    # 1e-4: batches of 4 and 2 may run different convolution algorithms (see the negative-prompt test below)
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond), rtol=1e-4, atol=1e-4)


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


@pytest.mark.parametrize("value, index", [(7, 7), ("7", 7), ("sneaker", 7), ("SNEAKER", 7), ("top", 0),
                                          ("t-shirt", 0), ("T-shirt/top", 0), ("ankle boot", 9)])
def test_class_by_index_or_name(value, index):
    assert class_index(FASHION_CLASSES, 10, value) == index


@pytest.mark.parametrize("value", [10, "-1", "sandals please", "car"])
def test_unknown_class_lists_the_valid_names(value):
    with pytest.raises(NoisecraftError, match="Sneaker, Bag, Ankle boot"):
        class_index(FASHION_CLASSES, 10, value)


@pytest.mark.parametrize("prompt, index", [("a photo of a sneaker", 7), ("Two SNEAKERS", 7), ("a t-shirt", 0),
                                           ("a plain shirt", 6), ("ankle boots on a table", 9),
                                           ("a dress", 3), ("a red car", None), ("", None)])
def test_the_class_a_prompt_names(prompt, index):
    assert class_in_prompt(FASHION_CLASSES, prompt) == index


def test_a_prompt_naming_two_classes_is_an_error():
    with pytest.raises(NoisecraftError, match="more than one class"):
        class_in_prompt(FASHION_CLASSES, "a shirt and a bag")


@pytest.fixture(scope="module")
def fashion_model():
    torch.manual_seed(0)
    config = ModelConfig(unet=replace(PRESETS["tiny"], num_classes=10), cond="class", class_names=FASHION_CLASSES)
    return DiffusionModel(config).eval()


def test_class_condition_from_class_prompt_and_negative(fashion_model):
    c = class_condition(fashion_model, 3, prompt="a photo of a sneaker", negative_prompt="sandals")
    assert c.label == "Sneaker" and c.cond["class_labels"].tolist() == [7, 7, 7]
    assert c.negative["class_labels"].tolist() == [5, 5, 5]
    assert class_condition(fashion_model, 2, class_="bag").cond["class_labels"].tolist() == [8, 8]
    assert class_condition(fashion_model, 2, prompt="  ").cond == {}                 # empty prompt: unconditional


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt": "a red car"}, "takes no free text"),
    ({"class_": "car"}, "unknown class"),
    ({"class_": 1, "prompt": "a bag"}, "not both"),
    ({"prompt": "a bag", "negative_prompt": "blurry"}, "negative prompt must name"),
    ({"negative_prompt": "a bag"}, "needs a class or a prompt"),
])
def test_class_condition_errors(fashion_model, kwargs, match):
    with pytest.raises(NoisecraftError, match=match):
        class_condition(fashion_model, 1, **kwargs)


def test_unconditional_model_takes_no_class_or_prompt():
    model = DiffusionModel(ModelConfig(unet=PRESETS["tiny"]))
    assert class_condition(model, 1, prompt="").cond == {}
    with pytest.raises(NoisecraftError, match="unconditional"):
        class_condition(model, 1, prompt="a cat")
    with pytest.raises(NoisecraftError, match="unconditional"):
        class_condition(model, 1, class_=3)


def test_negative_condition_replaces_the_unconditional_branch(fashion_model):
    with torch.no_grad():
        for p in fashion_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([100.0, 700.0])
    cond, neg = {"class_labels": torch.tensor([3, 7])}, {"class_labels": torch.tensor([5, 5])}
    with torch.no_grad():
        out = guided(fashion_model, cond, 2.5, neg)(x, t)
        c, n = fashion_model(x, t, **cond), fashion_model(x, t, **neg)
    # 1e-4: the guided batch of 4 and the separate batches of 2 may run different convolution algorithms
    # (the Winograd kernels take calls of 16 tiles or more), which agree to fp32 rounding, about 1e-5.
    torch.testing.assert_close(out, n + 2.5 * (c - n), rtol=1e-4, atol=1e-4)
