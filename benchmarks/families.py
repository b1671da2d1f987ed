"""Diffusion against the alternatives it replaced (VAE, GAN, PixelCNN) on the same data and CPU minutes, in one run.

Each family trains with noisecraft's own loop (noisecraft.train.loop.train, the same data order, batch 32,
seed 0, EMA 0.999, each family's default learning rate: 2e-3 diffusion, 1e-3 VAE and PixelCNN, 2e-4 GAN)
for --minutes of wall clock on the same threads, in --segments round-robin turns, at the preset for the data
(`tiny` 16x16 for digits, `mnist` 28x28 for Fashion-MNIST). Then each draws --n images (image i from seed
i; diffusion with the `auto` sampler at --steps model calls) and is scored against the real test split:

  FID, KID, precision, recall   EfficientNet-Lite0 features (noisecraft.eval), the same n real images
  judge                         the domain classifier's confident share, class-histogram TV to uniform, and the
                                Frechet distance on its penultimate features (noisecraft.eval.domain)
  bits/dim                      on --n-bits real test images: the VAE's ELBO bound and diffusion's variational
                                bound at 256 levels (noisecraft.diffusion.bound, --bound-terms stratified
                                terms), the PixelCNN's exact likelihood at its own levels (comparable with the
                                other two only when those are 256)
  seconds per image             sampling time of the n images over n

    python benchmarks/families.py --data digits --minutes 5 --n 500
    python benchmarks/families.py --data fashion-mnist --minutes 5 --n 200

Writes benchmarks/results/families-DATA.json, one 8x8 grid per family in benchmarks/results/ and
docs/images/families-DATA.png (the four grids side by side).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import matplotlib
import torch

from noisecraft import load_model, sample
from noisecraft.baselines.train import LEARNING_RATES
from noisecraft.data import load_dataset
from noisecraft.diffusion import bound
from noisecraft.eval.domain import domain_metrics
from noisecraft.eval.features import dataset_features, efficientnet_lite0, extract, subset
from noisecraft.eval.fid import compare
from noisecraft.io import atomic_write_json, save_png
from noisecraft.train.checkpoint import load_checkpoint
from noisecraft.train.loop import TrainOptions, train
from noisecraft.viz import figure_png, make_grid

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ROOT = Path(__file__).resolve().parent
RESULTS, IMAGES = ROOT / "results", ROOT.parent / "docs" / "images"
FAMILIES = ("diffusion", "vae", "gan", "autoregressive")
PRESET = {"digits": "tiny", "fashion-mnist": "mnist"}


def train_segment(family: str, data: str, out: Path, minutes: float, seed: int, resume: bool) -> float:
    """Train (or resume) one family for `minutes`; the seconds it took."""
    opts = TrainOptions(data=data, out=str(out), preset=PRESET[data], model=family, batch_size=32,
                        lr=LEARNING_RATES.get(family, TrainOptions.lr), max_minutes=minutes,
                        checkpoint_every=10 ** 9, sample_every=0, seed=seed, resume=resume)
    t0 = time.monotonic()
    train(opts, log=lambda _: None, progress=False)           # writes the model at the end of every segment
    return time.monotonic() - t0


def train_all(families: list[str], data: str, work: Path, minutes: float, segments: int, seed: int) -> dict:
    """Every family trains for `minutes` in all, in `segments` turns of minutes/segments each, round robin, so
    that load from other work on the machine falls on all families alike."""
    seconds = dict.fromkeys(families, 0.0)
    for k in range(segments):
        for family in families:
            seconds[family] += train_segment(family, data, work / family, minutes / segments, seed, resume=k > 0)
    report = {}
    for family in families:
        steps = load_checkpoint(work / family).meta["progress"]["step"]
        report[family] = {"steps": steps, "train_seconds": round(seconds[family], 1),
                          "train_images_per_second": round(32 * steps / seconds[family], 1),
                          "lr": LEARNING_RATES.get(family, TrainOptions.lr)}
    return report


@torch.no_grad()
def draw(model, family: str, n: int, steps: int, batch_size: int = 250) -> torch.Tensor:
    """n images, image i from its own generator seeded i, in [-1, 1]."""
    out = []
    for start in range(0, n, batch_size):
        gens = [torch.Generator().manual_seed(start + i) for i in range(min(batch_size, n - start))]
        if family == "diffusion":
            out.append(sample(model, (len(gens), *model.config.image_shape), sampler="auto", steps=steps, generator=gens))
        else:
            out.append(model.sample(len(gens), gens))
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def bits(model, family: str, x: torch.Tensor, terms: int) -> dict | None:
    """Bits per dimension on real images x, with what kind of figure it is."""
    if family == "gan":
        return None
    g = torch.Generator().manual_seed(0)
    if family == "diffusion":
        value, levels, kind = bound.bits_per_dim(model, x, terms=terms, generator=g), 256, "variational bound"
    else:
        value, levels = model.bits_per_dim(x, g), model.config.levels
        kind = "exact" if family == "autoregressive" else "ELBO bound"
    return {"bits_per_dim": round(float(value.mean()), 4), "levels": levels, "kind": kind}


def panel(grids: dict[str, torch.Tensor], data: str, minutes: float) -> None:
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.6))
    for ax, (family, x) in zip(axes, grids.items()):
        ax.imshow(make_grid(x[:64], nrow=8), cmap="gray", vmin=0, vmax=255)
        ax.set_title(family)
        ax.axis("off")
    fig.suptitle(f"{data}: 64 samples per family after {minutes:g} CPU minutes of training each")
    fig.tight_layout()
    (IMAGES / f"families-{data}.png").write_bytes(figure_png(fig))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(PRESET), default="digits")
    ap.add_argument("--minutes", type=float, default=5.0, help="training minutes per family")
    ap.add_argument("--segments", type=int, default=5, help="round-robin turns the minutes are split into")
    ap.add_argument("--n", type=int, default=500, help="samples per family for FID/KID/precision/recall and the judge")
    ap.add_argument("--n-bits", type=int, default=200, help="real test images for bits per dimension")
    ap.add_argument("--bound-terms", type=int, default=100, help="stratified timesteps of diffusion's bound")
    ap.add_argument("--steps", type=int, default=20, help="diffusion's sampling budget (model calls)")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--work", type=Path, default=Path("runs/families"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    families = args.families.split(",")
    work = args.work / args.data
    if work.exists():
        shutil.rmtree(work)                                         # a fresh run each time
    t_start = time.time()
    net = efficientnet_lite0()
    size = {"tiny": 16, "mnist": 28}[PRESET[args.data]]
    real = dataset_features(net, args.data, "test", args.n, size, 1)
    test = load_dataset(args.data, image_size=size, channels=1, split="test").images
    bits_images = test[subset(len(test), min(args.n_bits, len(test)))]
    report = {"data": args.data, "preset": PRESET[args.data], "image_size": size, "minutes": args.minutes,
              "segments": args.segments, "n": args.n, "n_bits": len(bits_images), "bound_terms": args.bound_terms, "diffusion_steps": args.steps,
              "batch_size": 32, "seed": args.seed, "reference": f"{args.data} test split, {len(real)} images",
              "feature_network": net.name, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "families": {}}
    trained = train_all(families, args.data, work, args.minutes, args.segments, args.seed)
    grids = {}
    for family in families:
        result = trained[family]
        model = load_model(work / family)
        result["parameters"] = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        x = draw(model, family, args.n, args.steps)
        result["sample_seconds_per_image"] = round((time.perf_counter() - t0) / args.n, 5)
        result.update({k: v for k, v in compare(real, extract(net, x)).items() if k != "warnings"})
        result["judge"] = domain_metrics(x, args.data)
        result["bits"] = bits(model, family, bits_images, args.bound_terms)
        report["families"][family] = result
        grids[family] = x
        save_png(RESULTS / f"families-{args.data}-{family}-grid.png", make_grid(x[:64], nrow=8),
                 {"family": family, "data": args.data, "minutes": str(args.minutes)})
        print(family, json.dumps(result), flush=True)
    report["seconds"] = round(time.time() - t_start, 1)
    atomic_write_json(RESULTS / f"families-{args.data}.json", report)
    panel(grids, args.data, args.minutes)


if __name__ == "__main__":
    main()
