"""A request's work, in two halves. `prepare()` checks everything that can be checked without running the model
(model name, limits, sampler and grid, strength, images, masks, class or prompt) and so answers bad input with a
4xx before the request takes a queue slot. The `Prepared` job it returns runs in a worker: the library's sample /
upscale / edit / inpaint over batches (noisecraft.tasks.batches), one seed per image, images grouped by their
condition so that instances asking for the same class or prompt share batches."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable

import torch

from noisecraft.data.transforms import flatten_pil
from noisecraft.errors import NoisecraftError
from noisecraft.guidance import condition
from noisecraft.models import check_pixel_space
from noisecraft.samplers import plan, sample
from noisecraft.server.codec import decode_image, encode_png
from noisecraft.server.models import ModelStore, Served
from noisecraft.server.pool import Job
from noisecraft.server.settings import Limits
from noisecraft.tasks.batches import check_seeds, run_batches, task_condition
from noisecraft.tasks.edit import check_strength, edit, edit_plan
from noisecraft.tasks.images import box_mask, to_model_image, to_model_mask
from noisecraft.tasks.inpaint import (DEFAULT_JUMP, DEFAULT_RECONSTRUCTION, DEFAULT_RESAMPLE, DEFAULT_STEPS,
                                      check_reconstruction, inpaint, model_calls)
from noisecraft.tasks.superres import METHODS, upscale

# The command line's defaults (noisecraft/cli.py), so the server and `noisecraft sample|upscale|edit|inpaint`
# give the same image for the same options and seed.
DEFAULTS: dict[str, dict] = {
    "generate": {"sampler": "auto", "steps": None, "spacing": None, "eta": None},
    "upscale": {"sampler": "ddpm", "steps": 100, "spacing": None, "eta": None, "factor": None, "method": "project"},
    "edit": {"sampler": "ddpm", "steps": 100, "spacing": None, "eta": None, "strength": 0.5},
    "inpaint": {"steps": DEFAULT_STEPS, "jump": DEFAULT_JUMP, "resample": DEFAULT_RESAMPLE,
                "reconstruction": DEFAULT_RECONSTRUCTION},
}
COMMON = ("model", "seed", "guidance")
TASKS = tuple(DEFAULTS)


@dataclass
class Item:
    """One image to make: its condition and, for the image-to-image tasks, its input."""

    class_: int | str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    image: str | None = None
    mask: str | None = None
    box: str | None = None

    @property
    def condition_key(self) -> tuple:
        return self.class_, self.prompt, self.negative_prompt


@dataclass
class Prepared:
    """A checked request, ready to run in a worker."""

    served: Served
    options: dict                      # what goes into each image's metadata, besides its condition and seed
    run: Callable                      # run(start, batch, generators, cond, negative, guidance, callback)
    items: list[Item]
    steps: int                         # model calls per image (limits) = sampler callbacks, for progress
    inputs: torch.Tensor | None = None           # (N, C, H, W) in [-1, 1]
    masks: torch.Tensor | None = None            # (N, 1, H, W) in {0, 1}
    seeds: list[int] = field(default_factory=list)
    guidance: float | None = None
    device: str = "cpu"
    batch_size: int = 8
    groups: dict = field(default_factory=dict)    # condition key -> indices of the items asking for it

    def __call__(self, job: Job | None = None, preview: Callable | None = None) -> list[dict]:
        """The images as {"image": base64 PNG, "seed", "metadata"}, in the order of the items. `preview(step,
        x_t, x0_pred)` sees every sampler step; `job.check()` stops the work past its deadline."""
        def callback(i, x_t, x0):
            if job is not None:
                job.check()
            if preview is not None:
                preview(i, x_t, x0)

        results: list[dict | None] = [None] * len(self.items)
        for (class_, prompt, negative), index in self.groups.items():
            tc = task_condition(self.served.model, len(index), class_, prompt, negative, self.guidance)
            meta = tc.metadata(self.served.name, self.options)
            inputs = self.inputs[index] if self.inputs is not None else None
            run = self.run if self.masks is None else self._with_masks(self.masks[index])
            x = run_batches(run, inputs, [self.seeds[i] for i in index], tc, batch_size=self.batch_size,
                            device=self.device, callback=callback)
            for j, i in enumerate(index):
                image_meta = meta | {"seed": self.seeds[i]}
                results[i] = {"image": encode_png(x[j], image_meta), "seed": self.seeds[i], "metadata": image_meta}
        return results

    def _with_masks(self, masks: torch.Tensor) -> Callable:
        return lambda start, x, *rest: self.run(start, x, *rest, masks=masks[start:start + len(x)].to(x.device))


def prepare(store: ModelStore, limits: Limits, task: str, options: dict, items: list[Item]) -> Prepared:
    """Check a request against the model and the limits; NoisecraftError (a 4xx) for anything wrong."""
    if task not in DEFAULTS:
        raise NoisecraftError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - set(DEFAULTS[task]) - set(COMMON))
    if extra:
        raise NoisecraftError(f"{', '.join(extra)} do{'es' if len(extra) == 1 else ''} not apply to task {task!r}: "
                              f"it takes {', '.join(sorted(set(DEFAULTS[task]) | set(COMMON)))}")
    served = store.get(given.get("model"))
    if not 1 <= len(items) <= limits.max_batch:
        raise NoisecraftError(f"{len(items)} images asked for: this server makes 1 to {limits.max_batch} per request")
    if given.get("steps", 0) > limits.max_steps:
        raise NoisecraftError(f"steps={given['steps']} is above this server's limit of {limits.max_steps}: ask for fewer")
    o = DEFAULTS[task] | given
    if o.get("steps") is not None:
        o["steps"] = min(o["steps"], limits.max_steps)     # a default above the limit gives way (the metadata says)
    prepared = PREPARE[task](served, o, items, limits)
    if prepared.steps > limits.max_model_calls:
        raise NoisecraftError(f"this request needs {prepared.steps} model calls per image, above this server's "
                              f"limit of {limits.max_model_calls}: ask for fewer steps (or, inpainting, fewer resamplings)")
    seed = given.get("seed", secrets.randbelow(2 ** 31))
    prepared.seeds = check_seeds(range(seed, seed + len(items)))
    prepared.guidance = given.get("guidance")
    prepared.batch_size = limits.max_batch
    prepared.device = store.device
    for i, item in enumerate(items):
        prepared.groups.setdefault(item.condition_key, []).append(i)
    for class_, prompt, negative in prepared.groups:
        # Class and unconditional models check a class or prompt instantly; a text model's prompt costs an
        # encoder pass, so it is left to the worker (a class given to a text model still fails here).
        if served.config.cond != "text" or class_ is not None:
            condition(served.model, 1, class_, prompt, negative)
    return prepared


def _no_inputs(items: list[Item], task: str) -> None:
    if any(v is not None for item in items for v in (item.image, item.mask, item.box)):
        raise NoisecraftError(f"task {task!r} makes images from noise: drop image, mask and box "
                              "(use task upscale, edit or inpaint to work on an image)")


def _input_images(items: list[Item], task: str, limits: Limits) -> list:
    if any(item.image is None for item in items):
        raise NoisecraftError(f"task {task!r} works on an image: give each one as 'image' (base64 PNG)")
    return [decode_image(item.image, f"image {i}" if len(items) > 1 else "the image", limits.max_image_side)
            for i, item in enumerate(items)]


def _generate(served: Served, o: dict, items: list[Item], limits: Limits) -> Prepared:
    _no_inputs(items, "generate")
    net = served.model
    p = plan(net, net.schedule, o["sampler"], o["steps"], o["spacing"], o["eta"])

    def run(start, x, gens, cond, negative, g, callback):
        return sample(net, (len(gens), *net.config.image_shape), sampler=p.sampler, steps=p.steps, spacing=p.spacing,
                      eta=p.eta, generator=gens, cond=cond, guidance_scale=g, negative_cond=negative, callback=callback)

    return Prepared(served, {"sampler": p.sampler, "steps": p.steps, "spacing": p.spacing, "eta": p.eta},
                    run, items, p.nfe)


def _upscale(served: Served, o: dict, items: list[Item], limits: Limits) -> Prepared:
    if o["method"] not in METHODS:
        raise NoisecraftError(f"unknown method {o['method']!r}: use one of {', '.join(METHODS)}")
    if any(item.mask is not None or item.box is not None for item in items):
        raise NoisecraftError("task 'upscale' takes no mask or box")
    net = served.model
    check_pixel_space(net, "task 'upscale'")
    size, channels = net.config.unet.image_size, net.config.unet.in_channels
    pils = _input_images(items, "upscale", limits)
    factor = o["factor"] or getattr(net.config, "sr_factor", 0) or None
    # Without a factor the input's own size says it (the library checks that it divides the model's size).
    side = size // factor if factor else min(pils[0].size)
    if side < 1:
        raise NoisecraftError(f"factor {factor} is larger than the model's image size {size}: use a factor that "
                              "divides it")
    if factor is None and size % side == 0:
        factor = size // side
    low = torch.stack([to_model_image(p, channels, side, f"image {i}") for i, p in enumerate(pils)])
    p = plan(net, net.schedule, o["sampler"], o["steps"], o["spacing"], o["eta"])

    def run(start, x, gens, cond, negative, g, callback):
        return upscale(net, x, factor, method=o["method"], sampler=p.sampler, steps=p.steps, spacing=p.spacing,
                       eta=p.eta, generator=gens, cond=cond, guidance_scale=g, negative_cond=negative, callback=callback)

    return Prepared(served, {"task": "upscale", "factor": factor, "method": o["method"],
                                        "sampler": p.sampler, "steps": p.steps}, run, items, p.nfe, low)


def _edit(served: Served, o: dict, items: list[Item], limits: Limits) -> Prepared:
    if any(item.mask is not None or item.box is not None for item in items):
        raise NoisecraftError("task 'edit' takes no mask or box (use task inpaint to fill a region)")
    net = served.model
    strength = check_strength(o["strength"])
    p, grid = edit_plan(net, net.schedule, strength, o["sampler"], o["steps"], o["spacing"], o["eta"])
    images = _model_images(net, _input_images(items, "edit", limits))

    def run(start, x, gens, cond, negative, g, callback):
        return edit(net, x, strength, sampler=p.sampler, steps=p.steps, spacing=p.spacing, eta=p.eta, generator=gens,
                    cond=cond, guidance_scale=g, negative_cond=negative, callback=callback)

    return Prepared(served, {"task": "edit", "strength": strength, "sampler": p.sampler, "steps": p.steps,
                                     "eta": p.eta, "start_t": f"{float(grid[0]):g}" if len(grid) else None},
                    run, items, p.fn.nfe(len(grid)) if len(grid) else 0, images)


def _inpaint(served: Served, o: dict, items: list[Item], limits: Limits) -> Prepared:
    net = served.model
    check_pixel_space(net, "task 'inpaint'")
    steps, jump, resample = o["steps"], o["jump"], o["resample"]
    reconstruction = check_reconstruction(o["reconstruction"])
    calls = model_calls(steps, jump, resample)
    pils = _input_images(items, "inpaint", limits)
    size = net.config.unet.image_size
    masks = []
    for i, (item, pil) in enumerate(zip(items, pils)):
        if (item.mask is None) == (item.box is None):
            raise NoisecraftError("give the region to fill as 'mask' (base64 PNG, white = fill) or as "
                                  "'box' (x0,y0,x1,y1), one of them")
        given = None if item.mask is None else flatten_pil(decode_image(item.mask, "the mask", limits.max_image_side), 1)
        masks.append(to_model_mask(given if given is not None else box_mask(item.box, *pil.size), *pil.size, size))
    images = _model_images(net, pils)

    def run(start, x, gens, cond, negative, g, callback, masks):
        return inpaint(net, x, masks, steps=steps, jump=jump, resample=resample, reconstruction=reconstruction,
                       generator=gens, cond=cond,
                       guidance_scale=g, negative_cond=negative, callback=callback)

    return Prepared(served, {"task": "inpaint", "sampler": "repaint", "steps": steps, "jump": jump,
                             "resample": resample, "reconstruction": reconstruction},
                    run, items, calls, images, torch.stack(masks))


def _model_images(net, pils: list) -> torch.Tensor:
    channels, size = net.config.image_shape[:2]                       # a latent model's images, not its latents
    return torch.stack([to_model_image(p, channels, size, f"image {i}") for i, p in enumerate(pils)])


PREPARE: dict[str, Callable[..., Prepared]] = {"generate": _generate, "upscale": _upscale, "edit": _edit,
                                               "inpaint": _inpaint}
