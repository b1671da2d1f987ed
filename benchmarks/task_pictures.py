"""The pictures of docs/tasks.md and docs/guide.md: each image-to-image task on held-out images, one row per
stage (input, output(s), ground truth), 8 images per row, fixed seeds.

    python benchmarks/task_pictures.py [--sr-model fashion-sr] [--zero-shot-model fashion]

Writes docs/images/tasks-{upscale,fashion-sr,edit,inpaint}.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from noisecraft import edit, inpaint, load_model, upscale
from noisecraft.data import load_dataset
from noisecraft.io import save_png
from noisecraft.tasks.common import box_down, box_up
from noisecraft.viz import make_grid

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
N = 8


def gens(n: int = N) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def rows(*stages: torch.Tensor) -> torch.Tensor:
    return torch.cat([s.clamp(-1, 1) for s in stages])


def held_out(model, source: str) -> torch.Tensor:
    c, size = model.config.unet.in_channels, model.config.unet.image_size
    return load_dataset(source, image_size=size, channels=c, split="test").images[:N]


def digits_pictures() -> None:
    model = load_model("digits")
    gt = held_out(model, "digits")
    low = box_down(gt, 4)
    bicubic = F.interpolate(low, size=gt.shape[-2:], mode="bicubic", align_corners=False)
    up = upscale(model, low, 4, generator=gens())
    save_png(IMAGES / "tasks-upscale.png", make_grid(rows(box_up(low, 4), bicubic, up, gt), nrow=N),
             {"rows": "4x4 input, bicubic, zero-shot x4 (project, ddpm 100), ground truth"})

    edits = [edit(model, gt, s, sampler="ddpm", steps=100, generator=gens()) for s in (0.2, 0.4, 0.6, 0.8, 1.0)]
    save_png(IMAGES / "tasks-edit.png", make_grid(rows(gt, *edits), nrow=N),
             {"rows": "input, then SDEdit at strength 0.2, 0.4, 0.6, 0.8, 1.0 (ddpm, 100 steps)"})

    mask = torch.zeros(1, 1, *gt.shape[-2:])
    mask[..., gt.shape[-1] // 2:] = 1
    filled = inpaint(model, gt, mask, generator=gens())
    replaced = inpaint(model, gt, mask, reconstruction=0, generator=gens())
    masked = gt * (1 - mask) + 0.0 * mask                                # the hole in mid grey
    save_png(IMAGES / "tasks-inpaint.png", make_grid(rows(masked, replaced, filled, gt), nrow=N),
             {"rows": "input with the right half masked, replacement only, replacement + reconstruction guidance "
                      "(defaults), ground truth"})


def fashion_pictures(sr_model: str, zero_shot_model: str) -> None:
    sr = load_model(sr_model)
    gt = held_out(sr, "fashion-mnist")
    low = box_down(gt, sr.config.sr_factor)
    bicubic = F.interpolate(low, size=gt.shape[-2:], mode="bicubic", align_corners=False)
    zero_shot = upscale(load_model(zero_shot_model), low, sr.config.sr_factor, generator=gens())
    trained = upscale(sr, low, generator=gens())
    save_png(IMAGES / "tasks-fashion-sr.png",
             make_grid(rows(box_up(low, sr.config.sr_factor), bicubic, zero_shot, trained, gt), nrow=N),
             {"rows": f"7x7 input, bicubic, zero-shot x4 with {zero_shot_model}, SR3 model {sr_model} (project, ddpm "
                      "100), ground truth"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sr-model", default="fashion-sr")
    ap.add_argument("--zero-shot-model", default="fashion")
    args = ap.parse_args()
    digits_pictures()
    fashion_pictures(args.sr_model, args.zero_shot_model)
    print(f"written to {IMAGES}/tasks-*.png")


if __name__ == "__main__":
    main()
