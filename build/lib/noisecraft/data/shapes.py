"""`shapes`: procedural captioned images and an exact prompt-adherence checker (text-to-image you can grade).

A scene is one or two flat objects on black: a circle, a square or an upright triangle, in pure red, green,
blue or yellow, small (bounding box 25% of the image side) or large (42%).

Captions have one grammar; `parse_prompt(caption(scene)) == scene`, and parse_prompt also takes any case,
extra spaces, "an" for "a" and a final full stop:

    prompt   := single | pair
    single   := "a" SIZE COLOUR SHAPE POSITION              "a large red circle at the top"
    pair     := "a" COLOUR SHAPE RELATION "a" COLOUR SHAPE  "a red circle left of a blue square"
    SIZE     := "small" | "large"
    COLOUR   := "red" | "green" | "blue" | "yellow"
    SHAPE    := "circle" | "square" | "triangle"
    POSITION := "on the left" | "on the right" | "at the top" | "at the bottom"
    RELATION := "left of" | "right of" | "above" | "below"

A pair's sizes are drawn at random and not named. Directions are exclusive: an object is "on the left" when
its centre is further left of the image centre than it is above or below it (and at least MIN_OFFSET
away), and "A left of B" when A's centre is further left of B's than above or below it. `render` keeps each
object well inside its region, so every rendered image has exactly one true caption.

`check(image, prompt)` reads an image back, any size from 16x16 (exact on renders at 16 to 96 pixels, drawn at
that size or resized, and with Gaussian noise):
  - a pixel's colour is the nearest corner of the colour cube (the four caption colours, cyan, magenta or
    white) once its brightest channel is scaled to 1, so dim, noisy or blurred colours still read right;
  - an object is an 8-connected component of one colour brighter than FOREGROUND, grown by a pixel to take
    in blurred edges, its pixels weighted by brightness; ones lighter than half a small triangle are specks;
  - its shape comes from the moments of those weights, which a blur hardly changes: an upright triangle's
    vertical profile is skewed (-0.57, the others 0), and a square is twice as flat (fourth cumulant)
    along its axes as along its diagonals, a circle the same in every direction;
  - its size is the side of its bounding box, found from its mass and shape; its position is the centre.
The image passes when it holds exactly the objects the prompt names (no extra ones) with the named colours,
shapes, sizes, position or relation; `check_report` says what differs.

Some colour/shape pairs (HELDOUT) never occur in the train split, not even as one object of a pair; every
test scene uses at least one, so adherence on the test split measures composition, not memory.
"""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from noisecraft.errors import NoisecraftError

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
# The checker also knows the other bright corners of the colour cube, so objects in them count as extra ones.
SEEN_COLOURS = COLOURS | {"cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.25, "large": 0.42}                  # bounding-box side / image side
# A direction is (axis, sign): axis 0 is x (left to right), 1 is y (top to bottom).
POSITIONS = {"on the left": (0, -1), "on the right": (0, 1), "at the top": (1, -1), "at the bottom": (1, 1)}
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}  # of A relative to B
HELDOUT = (("blue", "triangle"), ("yellow", "circle"), ("green", "square"))
IMAGE_SIZE = 32
MIN_IMAGE_SIZE = 16

# Layout, in fractions of the image side.
GAP = 0.05                # each object's nearest edge stays this far from the middle line
ACROSS = 0.10             # largest shift of a centre across its direction
MIN_OFFSET = 0.10         # a single object's centre is at least this far from the image centre
# Reading, brightness in [0, 1].
FOREGROUND = 0.4          # a component's core is brighter than this
FLOOR = 0.05              # around the core, weight = brightness above this floor (so background noise adds nothing)
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}   # area / bounding-box area
MIN_AREA = 0.5 * FILL["triangle"] * SIZES["small"] ** 2         # half a small triangle; less is a speck
TRIANGLE_SKEW = -0.2      # an upright triangle's vertical skewness is -0.57, blurred less; circles and squares 0


@dataclass(frozen=True)
class Obj:
    """One object of a scene: COLOURS and SHAPES keys, and a SIZES key or None."""

    colour: str
    shape: str
    size: str | None = None                             # None in a pair, whose captions leave size out


@dataclass(frozen=True)
class Scene:
    """One object at a position, or two objects A, B with A in a relation to B."""

    objects: tuple[Obj, ...]
    where: str                                          # a POSITIONS key for one object, a RELATIONS key for two


# -- captions --------------------------------------------------------------------------------------------------
def caption(scene: Scene) -> str:
    a = scene.objects[0]
    if len(scene.objects) == 1:
        return f"a {a.size} {a.colour} {a.shape} {scene.where}"
    b = scene.objects[1]
    return f"a {a.colour} {a.shape} {scene.where} a {b.colour} {b.shape}"


def _alternatives(words) -> str:
    return "|".join(words)


_COLOUR, _SHAPE = _alternatives(COLOURS), _alternatives(SHAPES)
_SINGLE = re.compile(rf"an? ({_alternatives(SIZES)}) ({_COLOUR}) ({_SHAPE}) ({_alternatives(POSITIONS)})")
_PAIR = re.compile(rf"an? ({_COLOUR}) ({_SHAPE}) ({_alternatives(RELATIONS)}) an? ({_COLOUR}) ({_SHAPE})")


def parse_prompt(text: str) -> Scene:
    """The scene a caption describes; case, extra spaces and a final full stop do not matter."""
    words = " ".join(str(text).lower().split()).removesuffix(".").strip()
    if m := _SINGLE.fullmatch(words):
        size, colour, shape, where = m.groups()
        return Scene((Obj(colour, shape, size),), where)
    if m := _PAIR.fullmatch(words):
        colour_a, shape_a, where, colour_b, shape_b = m.groups()
        return Scene((Obj(colour_a, shape_a), Obj(colour_b, shape_b)), where)
    raise NoisecraftError(
        f"cannot read {text!r} as a shapes prompt: write 'a SIZE COLOUR SHAPE POSITION' or 'a COLOUR SHAPE "
        f"RELATION a COLOUR SHAPE', with SIZE in {', '.join(SIZES)}; COLOUR in {', '.join(COLOURS)}; SHAPE in "
        f"{', '.join(SHAPES)}; POSITION in {', '.join(POSITIONS)}; RELATION in {', '.join(RELATIONS)}")


# -- scenes and drawing ------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options) -> str:
    return list(options)[rng.integers(len(options))]


def random_scene(rng: np.random.Generator, heldout: bool | None = False) -> Scene:
    """A random scene (one or two objects, equally often); heldout=False avoids every HELDOUT pair, True uses
    at least one, None allows any."""
    while True:
        if rng.integers(2) == 0:
            scene = Scene((Obj(_pick(rng, COLOURS), _pick(rng, SHAPES), _pick(rng, SIZES)),), _pick(rng, POSITIONS))
        else:
            scene = Scene(tuple(Obj(_pick(rng, COLOURS), _pick(rng, SHAPES)) for _ in range(2)), _pick(rng, RELATIONS))
        if heldout is None or uses_heldout(scene) == heldout:
            return scene


def uses_heldout(scene: Scene) -> bool:
    """Whether a scene shows a HELDOUT colour/shape pair."""
    return any((o.colour, o.shape) in HELDOUT for o in scene.objects)


def _mask(shape: str, cx: float, cy: float, half: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which of the points (x, y) lie inside the shape."""
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half ** 2
    if shape == "square":
        return (abs(x - cx) <= half) & (abs(y - cy) <= half)
    top = cy - half                                     # upright triangle: its half-width grows from 0 to `half`
    return (y >= top) & (y <= cy + half) & (abs(x - cx) <= (y - top) / 2)


@functools.lru_cache(maxsize=8)
def _sampling(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample points for drawing at `size`, at least 64 a side: their x and y in [0, 1] (fine, fine), and the
    (size, fine) matrix that averages them into pixels."""
    fine = size * -(-64 // size)
    y, x = (np.mgrid[0:fine, 0:fine] + 0.5) / fine
    pool = np.kron(np.eye(size, dtype=np.float32), np.full(fine // size, size / fine, dtype=np.float32))
    return x, y, pool


def render(scene: Scene, size: int = IMAGE_SIZE, rng: int | np.random.Generator = 0) -> np.ndarray:
    """(3, size, size) float32 in [-1, 1]. A single object sits in the named half of the image, two objects in
    opposite halves (so they never touch), each at a random distance from the middle line and with a small
    random shift across; rng is a seed or a generator (pass one generator to get varied placements).
    A pixel shows how much of it an object covers (sampled on a grid of at least 64 points a side), so
    small images keep their shapes."""
    rng = np.random.default_rng(rng)
    x, y, pool = _sampling(size)
    img = np.zeros((size, size, 3), dtype=np.float32)
    axis, sign = (POSITIONS if len(scene.objects) == 1 else RELATIONS)[scene.where]
    for obj, toward in zip(scene.objects, (sign, -sign)):
        half = SIZES[obj.size or _pick(rng, SIZES)] / 2
        along = 0.5 + toward * rng.uniform(half + GAP, 0.5 - half)
        across = 0.5 + rng.uniform(-ACROSS, ACROSS)
        cx, cy = (along, across) if axis == 0 else (across, along)
        cover = pool @ _mask(obj.shape, cx, cy, half, x, y).astype(np.float32) @ pool.T     # (size, size)
        img += cover[:, :, None] * np.array(COLOURS[obj.colour], dtype=np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1)) * 2 - 1                          # (3, size, size)


def make_split(n: int, seed: int, heldout: bool, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, list[str]]:
    """n scenes drawn with `seed`, rendered: ((n, 3, size, size) float32 in [-1, 1], their captions)."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, heldout) for _ in range(n)]
    images = np.stack([render(s, size, rng) for s in scenes])
    return torch.from_numpy(images), [caption(s) for s in scenes]


def heldout_prompts(n: int, seed: int = 0) -> list[str]:
    """n captions that each use at least one HELDOUT colour/shape pair (repeats possible)."""
    rng = np.random.default_rng(seed)
    return [caption(random_scene(rng, heldout=True)) for _ in range(n)]


# -- reading an image back -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """An object seen in an image; x, y: its bounding-box centre as fractions of the width and height."""

    colour: str
    shape: str                                          # a SHAPES name, or "blob" when it is none of them
    size: str
    x: float
    y: float

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} at ({self.x:.2f}, {self.y:.2f})"


def _measure(weights: np.ndarray) -> tuple[str, float, float, float]:
    """(shape, side, x, y) of one object from its pixel weights (H, W): the side of its bounding box and its
    centre, in pixels. Cumulants of a sum add, so a blur (a sum with a small symmetric spread) adds to the
    variance but barely moves the third and fourth cumulants that tell the shapes apart."""
    ys, xs = np.mgrid[0:weights.shape[0], 0:weights.shape[1]] + 0.5
    mass = weights.sum()
    mean = lambda v: float((weights * v).sum() / mass)
    x0, y0 = mean(xs), mean(ys)
    dx, dy = xs - x0, ys - y0
    var_x, var_y = mean(dx ** 2), mean(dy ** 2)
    cumulant4 = lambda u: mean(u ** 4) - 3 * mean(u ** 2) ** 2
    if not 4 / 9 * var_y <= var_x <= 9 / 4 * var_y:
        shape = "blob"                                  # every shape here is about as wide as it is tall
    elif mean(dy ** 3) < TRIANGLE_SKEW * var_y ** 1.5:
        shape = "triangle"
    elif cumulant4(dx) + cumulant4(dy) < 1.5 * (cumulant4((dx + dy) / 2 ** 0.5) + cumulant4((dx - dy) / 2 ** 0.5)):
        shape = "square"                                # (both sides negative: flatter than a normal distribution)
    else:
        shape = "circle"
    side = float(np.sqrt(mass / FILL.get(shape, 1.0)))
    return shape, side, x0, y0 - side / 6 * (shape == "triangle")   # a triangle's centroid is side/6 below centre


def find_objects(image) -> list[Found]:
    """Every object in an image (3, H, W) in [-1, 1] (numpy or torch), specks left out; see the module text."""
    from scipy import ndimage

    x = torch.as_tensor(image).detach().float().cpu().numpy()
    if x.ndim != 3 or x.shape[0] != 3 or min(x.shape[1:]) < MIN_IMAGE_SIZE:
        raise NoisecraftError(f"the shapes checker reads one RGB image (3, H, W) with H, W >= {MIN_IMAGE_SIZE}, "
                              f"got shape {tuple(x.shape)}")
    rgb = np.clip((x + 1) / 2, 0, 1)                    # (3, H, W) in [0, 1]
    bright = rgb.max(0)                                 # (H, W)
    hue = rgb / np.maximum(bright, 1e-6)                # (3, H, W), brightest channel scaled to 1
    palette = np.array(list(SEEN_COLOURS.values()), dtype=np.float32)         # (K, 3)
    nearest = ((hue[None] - palette[:, :, None, None]) ** 2).sum(1).argmin(0)  # (H, W)
    h, w = bright.shape
    grow = np.ones((3, 3), dtype=bool)
    found = []
    for k, colour in enumerate(SEEN_COLOURS):
        ours = nearest == k
        labels, count = ndimage.label((bright > FOREGROUND) & ours, structure=grow)
        for i in range(1, count + 1):
            pixels = ndimage.binary_dilation(labels == i, grow) & ours & (bright > FLOOR)
            weights = np.where(pixels, np.clip((bright - FLOOR) / (1 - FLOOR), 0, 1), 0.0)
            if weights.sum() < MIN_AREA * h * w:
                continue                                # a speck
            shape, side, cx, cy = _measure(weights)
            size = "large" if side / np.sqrt(h * w) > (SIZES["small"] + SIZES["large"]) / 2 else "small"
            found.append(Found(colour, shape, size, cx / w, cy / h))
    return found


def _heading(dx: float, dy: float) -> tuple[int, int]:
    """The direction (axis, sign) a displacement mostly goes in."""
    return (0, int(np.sign(dx))) if abs(dx) > abs(dy) else (1, int(np.sign(dy)))


def _name(direction: tuple[int, int], names: dict[str, tuple[int, int]]) -> str:
    return next(name for name, d in names.items() if d == direction)


def _differences(f: Found, o: Obj) -> list[str]:
    """How a found object differs from a named one in colour, shape and (when named) size."""
    return [f"{attr} is {getattr(f, attr)}, not {getattr(o, attr)}" for attr in ("colour", "shape", "size")
            if getattr(o, attr) is not None and getattr(f, attr) != getattr(o, attr)]


def _check_single(f: Found, o: Obj, where: str) -> str:
    problems = _differences(f, o)
    dx, dy = f.x - 0.5, f.y - 0.5
    if max(abs(dx), abs(dy)) < MIN_OFFSET:
        problems.append(f"it is in the middle, not {where}")
    elif (actual := _name(_heading(dx, dy), POSITIONS)) != where:
        problems.append(f"it is {actual}, not {where}")
    return "; ".join(problems)


def _check_pair(found: list[Found], a: Obj, b: Obj, where: str) -> str:
    orders = [(p, q) for p, q in (found, found[::-1]) if not _differences(p, a) and not _differences(q, b)]
    if not orders:
        return f"the objects are not a {a.colour} {a.shape} and a {b.colour} {b.shape}"
    actual = [_name(_heading(p.x - q.x, p.y - q.y), RELATIONS) for p, q in orders]
    if where in actual:
        return ""
    return f"the {a.colour} {a.shape} is {actual[0]} the {b.colour} {b.shape}, not {where} it"


def check_report(image, prompt: str) -> dict:
    """Whether an image (3, H, W) in [-1, 1] shows what `prompt` says, and why not:
    {"ok": bool, "reason": "" or what is wrong, "found": [the objects seen, as dicts]}."""
    scene = parse_prompt(prompt)
    found = find_objects(image)
    if len(found) != len(scene.objects):
        reason = f"{len(found)} objects where the prompt names {len(scene.objects)}"
    elif len(found) == 1:
        reason = _check_single(found[0], scene.objects[0], scene.where)
    else:
        reason = _check_pair(found, *scene.objects, scene.where)
    if reason:
        reason += f" (seen: {'; '.join(f.describe() for f in found) or 'nothing'})"
    return {"ok": not reason, "reason": reason, "found": [asdict(f) for f in found]}


def check(image, prompt: str) -> bool:
    """Whether an image (3, H, W) in [-1, 1] shows exactly what `prompt` says (see check_report for why not)."""
    return check_report(image, prompt)["ok"]
