"""Running a task over batches of images the same way wherever it is asked for (the command line, the server):
the condition comes from a class or a prompt (noisecraft.guidance.condition), the guidance scale defaults to the
model's own when there is a condition (and is 1 when there is none), image i is drawn with its own seed so it
comes out the same in any batch, and every image carries the metadata that lets it be made again."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from noisecraft.errors import NoisecraftError
from noisecraft.guidance import Condition, condition
from noisecraft.version import __version__

MAX_SEED = 2 ** 63 - 1          # torch.Generator.manual_seed takes any seed up to this, and seed + i must fit too


@dataclass
class TaskCondition:
    """What a task is conditioned on, for n images: the model's keywords, the guidance scale that applies,
    and the class or prompt for the metadata."""

    condition: Condition
    guidance: float
    prompt: str | None = None
    negative_prompt: str | None = None

    def metadata(self, model: str, options: dict) -> dict:
        """The metadata every image of the task shares (without its seed); unset values are left out."""
        meta = {"model": model, **options, "guidance": self.guidance, "class": self.condition.label,
                "prompt": self.prompt, "negative_prompt": self.negative_prompt, "noisecraft": __version__}
        return {k: v for k, v in meta.items() if v is not None}


def task_condition(model, n: int, class_: int | str | None = None, prompt: str | None = None,
                   negative_prompt: str | None = None, guidance: float | None = None) -> TaskCondition:
    """The condition for n images from what the user gave; every bad class or prompt is a NoisecraftError here."""
    c = condition(model, n, class_, prompt, negative_prompt)
    scale = (model.config.guidance if guidance is None else guidance) if c.label is not None else 1.0
    return TaskCondition(c, float(scale), prompt, negative_prompt)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise NoisecraftError("there is nothing to make: ask for at least one image")
    if min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise NoisecraftError(f"seeds must lie in [0, {MAX_SEED}], got {min(seeds)} .. {max(seeds)}")
    return seeds


def run_batches(run: Callable, images: torch.Tensor | None, seeds: Sequence[int], tc: TaskCondition, *,
                batch_size: int = 16, device: str | torch.device = "cpu", callback: Callable | None = None) -> torch.Tensor:
    """Call `run(start, batch, generators, cond, negative, guidance, callback)` on batches of `images` (None when
    there are no input images, only len(seeds) to make); `start` is the index of the batch's first image and
    image i is drawn from torch.Generator().manual_seed(seeds[i]). `callback(i, x_t, x0_pred)` is handed to
    every batch. Returns the images (N, C, H, W) on the CPU."""
    seeds = check_seeds(seeds)
    if batch_size < 1:
        raise NoisecraftError("the batch size must be at least 1")
    if images is not None and len(images) != len(seeds):
        raise NoisecraftError(f"{len(images)} input images but {len(seeds)} seeds: give one seed per image")
    c, results = tc.condition, []
    for start in range(0, len(seeds), batch_size):
        part = slice(start, start + batch_size)
        gens = [torch.Generator().manual_seed(s) for s in seeds[part]]
        cond = {k: v[part].to(device) for k, v in c.cond.items()}
        negative = None if c.negative is None else {k: v[part].to(device) for k, v in c.negative.items()}
        batch = images[part].to(device) if images is not None else None
        results.append(run(start, batch, gens, cond, negative, tc.guidance, callback).cpu())
    return torch.cat(results)
