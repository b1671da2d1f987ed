"""Prompt adherence of a text-to-image shapes model, judged by the exact checker of noisecraft.data.shapes.

Prompts come from the shapes test split: each names at least one colour/shape pair that never occurs in
training (HELDOUT), so passing means composing known words, not recalling images. For contrast the same
number of prompts is drawn from the training distribution ("seen"). Every prompt gets one image per
guidance scale, from the same initial noise, with the default sampler ("auto"). Reported: the share
passing the checker, for held-out and seen prompts, single objects and pairs, and the commonest reasons
for failing; a plot of adherence against guidance and a grid of held-out samples.

    python benchmarks/shapes_adherence.py --model runs/shapes [--n 200] [--guidance 0,1,2,4,8]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from noisecraft import load_model, sample
from noisecraft.data.shapes import caption, check_report, make_split, random_scene
from noisecraft.io import atomic_write_json, save_png
from noisecraft.viz import make_grid

ROOT = Path(__file__).resolve().parent


def prompt_sets(n: int) -> dict[str, list[str]]:
    """n held-out prompts (the first of the test split) and n seen ones (train distribution, another seed)."""
    _, heldout = make_split(n, seed=1, heldout=True, size=16)
    rng = np.random.default_rng(12345)
    return {"heldout": heldout, "seen": [caption(random_scene(rng, heldout=False)) for _ in range(n)]}


@torch.no_grad()
def draw(model, prompts: list[str], guidance: float, steps: int | None, batch_size: int = 100) -> torch.Tensor:
    """One image per prompt; image i always starts from the noise of seed i."""
    encoder = model.text_encoder()
    c, size = model.config.unet.in_channels, model.config.unet.image_size
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        states, mask, _ = encoder.encode(chunk)
        gens = [torch.Generator().manual_seed(start + i) for i in range(len(chunk))]
        out.append(sample(model, (len(chunk), c, size, size), sampler="auto", steps=steps, generator=gens,
                          cond={"context": states, "context_mask": mask}, guidance_scale=guidance))
    return torch.cat(out)


def reason_kind(reason: str) -> str:
    """A failure reason without the specifics, for tallying ("colour is red, not blue" -> "colour")."""
    kinds = set()
    for part in reason.split(" (seen:")[0].split("; "):
        if "objects where" in part:
            kinds.add(part)
        elif part.startswith("the objects are not"):
            kinds.add("wrong objects in a pair")
        elif part.startswith("it is"):
            kinds.add("place")
        elif part.startswith("the "):
            kinds.add("relation")
        else:
            kinds.add(part.split(" ")[0])
    return " + ".join(sorted(kinds))


def score(images: torch.Tensor, prompts: list[str]) -> dict:
    reports = [check_report(x, p) for x, p in zip(images, prompts)]
    ok = np.array([r["ok"] for r in reports])
    single = np.array([" of " not in p and " above " not in p and " below " not in p for p in prompts])
    fails = Counter(reason_kind(r["reason"]) for r in reports if not r["ok"])
    return {"adherence": float(ok.mean()), "single": float(ok[single].mean()) if single.any() else None,
            "pair": float(ok[~single].mean()) if (~single).any() else None, "n": len(prompts),
            "failures": dict(fails.most_common(8))}, ok


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted(report["guidance"], key=float)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for kind, style in (("heldout", "o-"), ("seen", "s--")):
        ax.plot([float(g) for g in scales], [100 * report["guidance"][g][kind]["adherence"] for g in scales],
                style, label=f"{kind} prompts")
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("pass the checker (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"shapes: prompt adherence ({report['n']} prompts each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200, help="prompts per set")
    ap.add_argument("--guidance", default="0,1,2,4,8", help="comma-separated scales")
    ap.add_argument("--steps", type=int, default=None, help="model calls per image before guidance (auto's default)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    model = load_model(args.model)
    tag = args.tag or Path(args.model).name
    sets = prompt_sets(args.n)
    report = {"model": args.model, "n": args.n, "steps": args.steps, "default_guidance": model.config.guidance,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "guidance": {}}
    for g in [float(s) for s in args.guidance.split(",")]:
        t0 = time.time()
        result = {}
        for kind, prompts in sets.items():
            images = draw(model, prompts, g, args.steps)
            result[kind], ok = score(images, prompts)
            if kind == "heldout":
                save_png(ROOT / "results" / f"{tag}-guidance{g:g}-grid.png", make_grid(images[:64], nrow=8),
                         {"prompts": json.dumps(prompts[:64]), "guidance": str(g)})
        result["sampling_seconds"] = round(time.time() - t0, 1)
        report["guidance"][f"{g:g}"] = result
        print(f"guidance {g:g}: held-out {result['heldout']['adherence']:.3f} seen {result['seen']['adherence']:.3f}",
              json.dumps({k: result[k]["failures"] for k in sets}), flush=True)
    atomic_write_json(ROOT / "results" / f"shapes_adherence-{tag}.json", report)
    plot(report, ROOT / "results" / f"shapes_adherence-{tag}.png")


if __name__ == "__main__":
    main()
