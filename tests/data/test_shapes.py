"""The shapes set: captions, rendering, the prompt checker and the held-out split."""
import numpy as np
import pytest
import torch

from noisecraft import NoisecraftError
from noisecraft.data import load_dataset
from noisecraft.data.shapes import (COLOURS, HELDOUT, POSITIONS, RELATIONS, SHAPES, SIZES, Obj, Scene, caption, check,
                                    check_report, heldout_prompts, parse_prompt, random_scene, render, uses_heldout)
from noisecraft.data.transforms import convert_tensor

_RNG = np.random.default_rng(123)
SCENES = [random_scene(_RNG, heldout=None) for _ in range(500)]


def _rendered(scenes, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [render(s, size, rng) for s in scenes]


def test_caption_and_parse_are_inverses():
    for scene in SCENES:
        assert parse_prompt(caption(scene)) == scene
    assert {s.where for s in SCENES} == set(POSITIONS) | set(RELATIONS)
    assert caption(Scene((Obj("red", "circle", "large"),), "at the top")) == "a large red circle at the top"
    assert caption(Scene((Obj("red", "circle"), Obj("blue", "square")), "left of")) == \
        "a red circle left of a blue square"
    assert parse_prompt("  A Large RED circle   on the LEFT. ") == \
        Scene((Obj("red", "circle", "large"),), "on the left")
    assert parse_prompt("a yellow triangle BELOW an\tyellow square") == \
        Scene((Obj("yellow", "triangle"), Obj("yellow", "square")), "below")


@pytest.mark.parametrize("text", ["a red circle", "a purple circle on the left", "a red circle near a blue square",
                                  "a large red circle left of a blue square", "a medium red circle at the top", ""])
def test_unreadable_prompts_say_what_is_valid(text):
    with pytest.raises(NoisecraftError, match="cannot read .*'a SIZE COLOUR SHAPE POSITION'.*COLOUR in red, green, "
                                              "blue, yellow.*RELATION in left of, right of, above, below") as e:
        parse_prompt(text)
    assert "\n" not in str(e.value)


def test_render_is_seeded_and_in_range():
    scene = SCENES[0]
    a, b = render(scene, rng=3), render(scene, rng=3)
    assert a.shape == (3, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() == -1.0 and a.max() == 1.0
    assert not np.array_equal(a, render(scene, rng=4))          # placements are jittered


def test_checker_accepts_every_rendered_scene_also_with_noise():
    images = _rendered(SCENES)
    assert all(check(x, caption(s)) for x, s in zip(images, SCENES))
    rng = np.random.default_rng(0)
    noisy = [check(x + 0.1 * rng.standard_normal(x.shape).astype(np.float32), caption(s))
             for x, s in zip(images, SCENES)]
    assert np.mean(noisy) >= 0.99
    assert check(torch.from_numpy(images[0]), caption(SCENES[0]))                    # tensors too


@pytest.mark.parametrize("size", [16, 24, 64])
def test_checker_reads_other_sizes_drawn_or_resized(size):
    scenes = SCENES[:100]
    resized = convert_tensor(torch.from_numpy(np.stack(_rendered(scenes))), size, None)
    for drawn, small, scene in zip(_rendered(scenes, size), resized, scenes):
        assert check(drawn, caption(scene)) and check(small, caption(scene)), caption(scene)


def _wrong_captions(scene: Scene):
    """Every caption that differs from the scene's in exactly one attribute and is then false."""
    def with_object(i, **change):
        objects = list(scene.objects)
        objects[i] = Obj(**{**objects[i].__dict__, **change})
        return Scene(tuple(objects), scene.where)

    for i, o in enumerate(scene.objects):
        yield from (with_object(i, colour=c) for c in COLOURS if c != o.colour)
        yield from (with_object(i, shape=s) for s in SHAPES if s != o.shape)
    if len(scene.objects) == 1:
        yield from (with_object(0, size=s) for s in SIZES if s != scene.objects[0].size)
        yield from (Scene(scene.objects, p) for p in POSITIONS if p != scene.where)
    else:
        mirror = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        symmetric = scene.objects[0] == scene.objects[1]            # "a red circle above a red circle" reads both ways
        yield from (Scene(scene.objects, r) for r in RELATIONS
                    if r != scene.where and not (symmetric and r == mirror[scene.where]))


def test_checker_rejects_a_caption_wrong_in_any_one_attribute():
    scenes = SCENES[:120]
    for image, scene in zip(_rendered(scenes, seed=1), scenes):
        for wrong in _wrong_captions(scene):
            assert not check(image, caption(wrong)), (caption(scene), caption(wrong))


def test_checker_reports_what_differs():
    image = render(parse_prompt("a large red circle on the left"))
    report = check_report(image, "a small red square at the top")
    assert not report["ok"] and report["found"][0]["colour"] == "red"
    assert all(part in report["reason"] for part in ("shape is circle, not square", "size is large, not small",
                                                     "it is on the left, not at the top", "seen: a large red circle"))
    pair = render(parse_prompt("a green triangle above a blue square"))
    assert check_report(pair, "a green triangle below a blue square")["reason"].startswith(
        "the green triangle is above the blue square, not below it")
    assert check_report(pair, "a green circle below a blue square")["reason"].startswith(
        "the objects are not a green circle and a blue square")


def test_checker_counts_objects_and_ignores_specks():
    one, two = "a large red circle on the left", "a red circle left of a blue square"
    assert not check(render(parse_prompt(one)), two) and not check(render(parse_prompt(two)), one)
    assert check_report(-np.ones((3, 32, 32), dtype=np.float32), one)["reason"].startswith("0 objects")
    image = render(parse_prompt(one))
    image[:, 30, 30] = 1.0                                              # a white speck
    assert check(image, one)
    image[:, 2:10, 22:30] = 1.0                                         # a white square: an object of no caption colour
    assert check_report(image, one)["reason"].startswith("2 objects where the prompt names 1")


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 8, 8), (2, 3, 32, 32)])
def test_checker_wants_one_rgb_image_of_16_pixels_or_more(shape):
    with pytest.raises(NoisecraftError, match=r"one RGB image \(3, H, W\) with H, W >= 16"):
        check(np.zeros(shape, dtype=np.float32), "a large red circle on the left")


def test_heldout_prompts_use_a_heldout_pair():
    prompts = heldout_prompts(200, seed=5)
    assert prompts == heldout_prompts(200, seed=5) and len(set(prompts)) > 50
    assert all(uses_heldout(parse_prompt(p)) for p in prompts)
    rng = np.random.default_rng(0)
    assert not any(uses_heldout(random_scene(rng)) for _ in range(500))
    assert len(HELDOUT) == 3 and {s for _, s in HELDOUT} == set(SHAPES)


def test_dataset_splits_keep_the_heldout_pairs_apart():
    train, test = load_dataset("shapes", split="train"), load_dataset("shapes", split="test")
    assert train.images.shape == (20_000, 3, 32, 32) and test.images.shape == (2_000, 3, 32, 32)
    assert train.images.dtype == torch.float32 and float(train.images.min()) == -1.0
    assert float(train.images.max()) == 1.0
    assert len(train.captions) == 20_000 and len(test.captions) == 2_000
    assert train.labels is None and train.class_names is None and train.name == "shapes"
    assert not any(uses_heldout(parse_prompt(c)) for c in set(train.captions))
    assert all(uses_heldout(parse_prompt(c)) for c in set(test.captions))
    both = load_dataset("shapes", split="all")
    assert torch.equal(both.images, torch.cat([train.images, test.images]))       # the same data every time
    assert both.captions == train.captions + test.captions
    assert all(check(x, c) for x, c in zip(test.images[:50], test.captions[:50]))
    assert load_dataset("shapes", split="test", image_size=16).images.shape == (2_000, 3, 16, 16)
