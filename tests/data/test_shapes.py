"""The shapes set: captions, rendering, the prompt checker and the held-out split."""
import numpy as np
import pytest
import torch

from noisecraft import NoisecraftError
from noisecraft.data import load_dataset
from noisecraft.data.shapes import (COLOURS, HELDOUT, POSITIONS, RELATIONS, SHAPES, SIZES, Obj, Scene, caption, check,
                                    check_report, heldout_prompts, parse_prompt, random_scene, render)

RNG = np.random.default_rng(123)
SCENES = [random_scene(RNG, None) for _ in range(400)]


def test_caption_and_parse_are_inverses():
    for scene in SCENES:
        assert parse_prompt(caption(scene)) == scene
    assert parse_prompt("  A Large RED circle   on the LEFT. ") == Scene((Obj("red", "circle", "large"),), "on the left")


@pytest.mark.parametrize("text", ["a red circle", "a purple circle on the left", "a red circle near a blue square", ""])
def test_unreadable_prompts_say_what_is_valid(text):
    with pytest.raises(NoisecraftError, match="cannot read .* COLOUR in red, green, blue, yellow"):
        parse_prompt(text)


def test_checker_accepts_every_rendered_scene_also_with_noise():
    rng = np.random.default_rng(0)
    assert all(check(render(s, rng=rng), caption(s)) for s in SCENES)
    noisy = [check(render(s, rng=rng) + 0.15 * rng.standard_normal((3, 32, 32)).astype(np.float32), caption(s))
             for s in SCENES]
    assert np.mean(noisy) >= 0.99
    assert check(torch.from_numpy(render(SCENES[0], rng=rng)), caption(SCENES[0]))      # tensors too


def _variants(scene: Scene):
    """Captions that differ from the scene in exactly one attribute."""
    a = scene.objects[0]
    other = lambda options, v: next(o for o in options if o != v)
    yield Scene((Obj(other(list(COLOURS), a.colour), a.shape, a.size), *scene.objects[1:]), scene.where)
    yield Scene((Obj(a.colour, other(SHAPES, a.shape), a.size), *scene.objects[1:]), scene.where)
    if len(scene.objects) == 1:
        yield Scene((Obj(a.colour, a.shape, other(list(SIZES), a.size)),), scene.where)
        opposite = {"on the left": "on the right", "on the right": "on the left", "at the top": "at the bottom",
                    "at the bottom": "at the top"}
        yield Scene(scene.objects, opposite[scene.where])
    elif scene.objects[0] != scene.objects[1]:          # "a red circle above a red circle" reads both ways
        swap = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        yield Scene(scene.objects, swap[scene.where])


def test_checker_rejects_a_caption_wrong_in_any_one_attribute():
    rng = np.random.default_rng(1)
    for scene in SCENES[:150]:
        img = render(scene, rng=rng)
        for wrong in _variants(scene):
            assert not check(img, caption(wrong)), (caption(scene), caption(wrong))


def test_checker_rejects_missing_and_extra_objects():
    one = Scene((Obj("red", "circle", "large"),), "on the left")
    two = Scene((Obj("red", "circle"), Obj("blue", "square")), "left of")
    assert not check(render(one), caption(two)) and not check(render(two), caption(one))
    assert check_report(-np.ones((3, 32, 32), dtype=np.float32), caption(one))["reason"].startswith("0 objects")


def test_train_split_never_shows_a_heldout_pair_and_test_always_does():
    train, test = load_dataset("shapes", split="train"), load_dataset("shapes", split="test")
    assert train.images.shape == (20_000, 3, 32, 32) and test.images.shape == (2_000, 3, 32, 32)
    assert len(train.captions) == 20_000 and train.labels is None
    assert float(train.images.min()) == -1.0 and float(train.images.max()) == 1.0
    uses = lambda c: any((o.colour, o.shape) in HELDOUT for o in parse_prompt(c).objects)
    assert not any(uses(c) for c in set(train.captions)) and all(uses(c) for c in set(test.captions))
    assert all(uses(p) for p in heldout_prompts(50))
    again = load_dataset("shapes", split="test")
    assert torch.equal(again.images, test.images) and again.captions == test.captions
    assert set(POSITIONS) | set(RELATIONS) >= {parse_prompt(c).where for c in set(train.captions)}
