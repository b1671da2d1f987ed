"""`shapes`: procedural captioned images with an exact prompt-adherence checker (text-to-image you can grade).

Objects are flat circles, squares and triangles (apex up) in red, green, blue or yellow on black.
Captions follow one grammar, and `parse_prompt` is the inverse of `caption`:
    single object:  "a {small|large} {colour} {shape} {on the left|on the right|at the top|at the bottom}"
    two objects:    "a {colour} {shape} {left of|right of|above|below} a {colour} {shape}"
`check(image, prompt)` reads a picture back: pixels go to the nearest palette colour, each colour's
connected components larger than a speck are objects; a triangle is told by where its mass sits (2/3 of the
way down its bounding box, against 1/2), a square from a circle by how much of its bounding box it fills (1 against
pi/4); the size comes from the bounding box, positions and relations from centroids. The image passes when it holds exactly the objects the prompt names, with the
named attributes. Some colour/shape pairs (HELDOUT) never occur in the train split, so adherence on
them measures composition rather than memory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from noisecraft.errors import NoisecraftError

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.40}                       # bounding-box side / image side
POSITIONS = {"on the left": (0, -1), "on the right": (0, 1), "at the top": (1, -1), "at the bottom": (1, 1)}
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}   # (axis, sign of A - B)
HELDOUT = (("blue", "triangle"), ("yellow", "circle"), ("green", "square"))
SIZE = 32


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str | None = None                                  # relations leave size out of the caption


@dataclass(frozen=True)
class Scene:
    """One object at a position, or two objects in a relation (A relation B)."""

    objects: tuple[Obj, ...]
    where: str                                               # a POSITIONS key, or a RELATIONS key


def caption(scene: Scene) -> str:
    a = scene.objects[0]
    if len(scene.objects) == 1:
        return f"a {a.size} {a.colour} {a.shape} {scene.where}"
    b = scene.objects[1]
    return f"a {a.colour} {a.shape} {scene.where} a {b.colour} {b.shape}"


_C, _S = "|".join(COLOURS), "|".join(SHAPES)
_SINGLE = re.compile(rf"an? ({'|'.join(SIZES)}) ({_C}) ({_S}) ({'|'.join(POSITIONS)})")
_PAIR = re.compile(rf"an? ({_C}) ({_S}) ({'|'.join(RELATIONS)}) an? ({_C}) ({_S})")


def parse_prompt(text: str) -> Scene:
    """The scene a caption describes; case and extra spaces do not matter."""
    t = " ".join(str(text).lower().replace(".", " ").split())
    if m := _SINGLE.fullmatch(t):
        size, colour, shape, where = m.groups()
        return Scene((Obj(colour, shape, size),), where)
    if m := _PAIR.fullmatch(t):
        c1, s1, where, c2, s2 = m.groups()
        return Scene((Obj(c1, s1), Obj(c2, s2)), where)
    raise NoisecraftError(f"cannot read {text!r} as a shapes prompt: use 'a small|large COLOUR SHAPE on the left|"
                          f"on the right|at the top|at the bottom' or 'a COLOUR SHAPE left of|right of|above|below "
                          f"a COLOUR SHAPE', with COLOUR in {', '.join(COLOURS)} and SHAPE in {', '.join(SHAPES)}")


# -- drawing ---------------------------------------------------------------------------------------------
def _mask(shape: str, cx: float, cy: float, half: float, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5                    # pixel centres
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half ** 2
    if shape == "square":
        return (abs(x - cx) <= half) & (abs(y - cy) <= half)
    top = cy - half                                          # triangle, apex up: half-width grows to `half`
    return (y >= top) & (y <= cy + half) & (abs(x - cx) <= (y - top) / 2)


def render(scene: Scene, size: int = SIZE, rng: np.random.Generator | None = None) -> np.ndarray:
    """(3, size, size) float32 in [-1, 1]. Each object sits in its own half of the image (so two never
    overlap), with random jitter along both axes."""
    rng = rng if rng is not None else np.random.default_rng(0)
    img = np.zeros((size, size, 3), dtype=np.float32)
    if len(scene.objects) == 1:
        axis, sign = POSITIONS[scene.where]
        places = [(axis, sign)]
    else:
        axis, sign = RELATIONS[scene.where]
        places = [(axis, sign), (axis, -sign)]
    for obj, (axis, sign) in zip(scene.objects, places):
        s = obj.size or rng.choice(list(SIZES))
        half = SIZES[s] * size / 2
        along = size * (0.5 + sign * rng.uniform(0.22, 0.3))  # centre in the named half, >= 1 pixel from the middle
        across = size * rng.uniform(0.3, 0.7)
        cx, cy = (along, across) if axis == 0 else (across, along)
        img[_mask(obj.shape, cx, cy, half, size)] = COLOURS[obj.colour]
    return np.ascontiguousarray(img.transpose(2, 0, 1)) * 2 - 1


def random_scene(rng: np.random.Generator, heldout: bool | None = False) -> Scene:
    """A scene; heldout=False avoids every HELDOUT pair, True includes at least one, None allows any."""
    while True:
        objs = [Obj(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))) for _ in range(rng.integers(1, 3))]
        if len(objs) == 1:
            scene = Scene((Obj(objs[0].colour, objs[0].shape, str(rng.choice(list(SIZES)))),),
                          str(rng.choice(list(POSITIONS))))
        else:
            scene = Scene(tuple(objs), str(rng.choice(list(RELATIONS))))
        used = any((o.colour, o.shape) in HELDOUT for o in scene.objects)
        if heldout is None or used == heldout:
            return scene


def make_split(n: int, seed: int, heldout: bool, size: int = SIZE) -> tuple[torch.Tensor, list[str]]:
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, heldout) for _ in range(n)]
    images = np.stack([render(s, size, rng) for s in scenes])
    return torch.from_numpy(images), [caption(s) for s in scenes]


def heldout_prompts(n: int, seed: int = 0) -> list[str]:
    """n captions that use at least one held-out colour/shape pair."""
    rng = np.random.default_rng(seed)
    return [caption(random_scene(rng, True)) for _ in range(n)]


# -- reading an image back --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    size: str
    cx: float                                                 # centroid / image side, in [0, 1]
    cy: float


def find_objects(image, min_area: float = 0.012) -> list[Found]:
    """The objects in an image (3, H, W) in [-1, 1]: palette colour, shape, size and centroid of every
    component larger than min_area of the image."""
    from scipy import ndimage

    x = torch.as_tensor(image).detach().float().cpu().numpy()
    h, w = x.shape[1:]
    rgb = (x.transpose(1, 2, 0) + 1) / 2                      # (H, W, 3) in [0, 1]
    palette = np.array([(0.0, 0.0, 0.0), *COLOURS.values()])   # background first
    nearest = np.linalg.norm(rgb[:, :, None] - palette[None, None], axis=-1).argmin(-1)
    found = []
    for k, name in enumerate(COLOURS, start=1):
        labels, count = ndimage.label(nearest == k)
        for i in range(1, count + 1):
            ys, xs = np.nonzero(labels == i)
            if len(ys) < min_area * h * w:
                continue                                       # a speck, not an object
            bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
            side, fill = max(bw, bh), len(ys) / (bw * bh)
            # An upright triangle's mass sits 2/3 of the way down its box; a circle's and a square's halfway.
            drop = (ys.mean() - ys.min() + 0.5) / bh
            shape = "triangle" if drop > 0.58 else "square" if fill > 0.9 else "circle"
            size = "large" if side / w > (SIZES["small"] + SIZES["large"]) / 2 else "small"
            found.append(Found(name, shape, size, (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h))
    return found


def check_report(image, prompt: str) -> dict:
    """Whether an image shows what its prompt says, and why not: {"ok", "reason", "found"}."""
    scene = parse_prompt(prompt)
    found = find_objects(image)
    out = {"ok": False, "found": [f"{f.size} {f.colour} {f.shape} at ({f.cx:.2f}, {f.cy:.2f})" for f in found]}
    if len(found) != len(scene.objects):
        return out | {"reason": f"{len(found)} objects, the prompt names {len(scene.objects)}"}
    matches = lambda f, o: f.colour == o.colour and f.shape == o.shape and (o.size is None or f.size == o.size)
    if len(found) == 1:
        f, axis_sign = found[0], POSITIONS[scene.where]
        if not matches(f, scene.objects[0]):
            return out | {"reason": "the object's colour, shape or size differs"}
        pos = (f.cx, f.cy)[axis_sign[0]]
        if not (pos < 0.42 if axis_sign[1] < 0 else pos > 0.58):
            return out | {"reason": f"the object is not {scene.where}"}
        return out | {"ok": True, "reason": ""}
    a, b = scene.objects
    pairs = [(p, q) for p, q in (found, found[::-1]) if matches(p, a) and matches(q, b)]
    if not pairs:
        return out | {"reason": "the two objects' colours or shapes differ from the prompt"}
    axis, sign = RELATIONS[scene.where]
    for p, q in pairs:
        if sign * ((p.cx, p.cy)[axis] - (q.cx, q.cy)[axis]) > 0.15:
            return out | {"ok": True, "reason": ""}
    return out | {"reason": f"the first object is not {scene.where} the second"}


def check(image, prompt: str) -> bool:
    return check_report(image, prompt)["ok"]
