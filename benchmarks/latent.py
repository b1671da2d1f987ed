"""Pixel diffusion against latent diffusion (Rombach et al. 2022) on a 64x64 set at equal training minutes, in one run.

Three trainings with noisecraft's own loop (noisecraft.train.loop.train), one after another on the same threads:

  vae      the `base` VAE preset (64x64 RGB -> 4x16x16 spatial latents), batch 32, for --minutes
  pixel    the `base` UNet on the 64x64 images, batch 16, for --minutes
  latent   the `base` UNet's widths on the VAE's scaled latents (train --latent), batch 16, for --minutes

Both diffusion models use DDPM's linear schedule, epsilon prediction, lr 2e-3 with a 20-step warm-up (the
pixel model takes few steps in the budget, and the default 100-step warm-up would never reach the peak).
A stage whose model directory already holds a finished run (config.json) is reused, not retrained.

Then each diffusion model draws --n images with the same sampler and steps (image i from seed i) and is
scored against --n real images with noisecraft eval's FID and KID (EfficientNet-Lite0 features), and the VAE
is scored on its reconstructions of --n real images (MSE, PSNR, FID/KID, bits/dim bound): the latent
model can be no better than those. Reported: training images/s (and the process CPU seconds of the stage
when this run trained it), sampling seconds per image (wall and CPU; the latent model's include decoding).

    OMP_NUM_THREADS=1 python benchmarks/latent.py --data emoji --minutes 10 --n 200 --steps 20

Writes benchmarks/results/latent.json, an 8x8 grid per model in benchmarks/results/latent-*-grid.png and
docs/images/latent-samples.png (pixel | latent samples) and docs/images/latent-reconstructions.png.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from noisecraft import load_model, sample
from noisecraft.data import load_dataset
from noisecraft.eval.features import feature_net, subset
from noisecraft.eval.fid import evaluate
from noisecraft.io import atomic_write_json, save_png
from noisecraft.train.loop import TrainOptions, train
from noisecraft.viz import make_grid

ROOT = Path(__file__).resolve().parent
DOCS = ROOT.parent / "docs" / "images"


def stage(name: str, opts: TrainOptions) -> dict:
    """Train (or reuse) one model directory; its throughput from train_log.jsonl."""
    out = Path(opts.out)
    cpu = None
    if not (out / "config.json").is_file():
        print(f"training {name} for {opts.max_minutes} minutes -> {out}", flush=True)
        t0 = time.process_time()
        train(opts, log=print, progress=False)
        cpu = time.process_time() - t0
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    last = records[-1]
    return {"dir": str(out), "steps": last["step"], "batch": opts.batch_size, "minutes": round(last["minutes"], 2),
            "train_img_s": round(last["step"] * opts.batch_size / (60 * last["minutes"]), 2),
            "cpu_seconds": None if cpu is None else round(cpu, 1), "epochs": last["epoch"]}


def draw(model, n: int, steps: int, batch: int) -> tuple[torch.Tensor, float, float]:
    """n images (image i from seed i) with DDIM; (images, wall seconds per image, CPU seconds per image)."""
    shape = model.config.image_shape
    xs, w0, c0 = [], time.perf_counter(), time.process_time()
    for start in range(0, n, batch):
        gens = [torch.Generator().manual_seed(start + i) for i in range(min(batch, n - start))]
        xs.append(sample(model, (len(gens), *shape), sampler="ddim", steps=steps, generator=gens))
    return torch.cat(xs), (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def scores(images: torch.Tensor, data: str, net) -> dict:
    r = evaluate(images, data, net, domain=False)
    return {k: r[k] for k in ("fid", "kid", "kid_std", "precision", "recall", "n")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="emoji")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--work", default="/tmp/latent-bench", help="where the three model directories go")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=25, help="sampling batch")
    args = ap.parse_args()
    work = Path(args.work)

    common = dict(data=args.data, max_minutes=args.minutes, sample_every=0)
    vae_opts = TrainOptions(out=str(work / "vae"), model="vae", preset="base", batch_size=32, lr=1e-3,
                            checkpoint_every=500, **common)
    diffusion = dict(preset="base", batch_size=16, lr=2e-3, warmup_steps=20, checkpoint_every=100, log_every=1, **common)
    report = {"data": args.data, "minutes": args.minutes, "n": args.n, "sampler": "ddim", "steps": args.steps,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "train": {}}
    report["train"]["vae"] = stage("vae", vae_opts)
    report["train"]["pixel"] = stage("pixel", TrainOptions(out=str(work / "pixel"), **diffusion))
    report["train"]["latent"] = stage("latent", TrainOptions(out=str(work / "latent"), latent=str(work / "vae"),
                                                             **diffusion))

    net = feature_net()
    real = load_dataset(args.data, image_size=64, channels=3).images
    report["real_vs_real"] = scores(real[subset(len(real), args.n, seed=1)], args.data, net)
    print("real vs real", report["real_vs_real"], flush=True)

    latent_model = load_model(work / "latent")
    report["latent_scale"] = latent_model.config.latent_scale
    x = real[subset(len(real), args.n, seed=2)]
    vae = load_model(work / "vae")
    with torch.no_grad():
        recon = latent_model.decode(latent_model.encode(x))            # the VAE as the latent model uses it
        bpd = float(vae.bits_per_dim(x, torch.Generator().manual_seed(0)).mean())
    mse = float(((recon - x) ** 2).mean())
    report["vae"] = {"mse": mse, "psnr_db": 10 * math.log10(4 / mse), "bits_per_dim": bpd,
                     **scores(recon, args.data, net)}
    print("vae", report["vae"], flush=True)
    save_png(ROOT / "results" / "latent-vae-grid.png", make_grid(torch.cat([x[:32], recon[:32]]), nrow=8))
    save_png(DOCS / "latent-reconstructions.png", make_grid(torch.stack([x[:16], recon[:16]], 1).flatten(0, 1),
                                                            nrow=8, scale=2))

    grids = []
    for name in ("pixel", "latent"):
        model = latent_model if name == "latent" else load_model(work / name)
        images, wall, cpu = draw(model, args.n, args.steps, args.batch_size)
        report[name] = {"sample_s_per_image": round(wall, 4), "sample_cpu_s_per_image": round(cpu, 4),
                        **scores(images, args.data, net)}
        print(name, report[name], flush=True)
        save_png(ROOT / "results" / f"latent-{name}-grid.png", make_grid(images[:64], nrow=8),
                 {"model": name, "sampler": "ddim", "steps": str(args.steps), "seed": "0..63"})
        grids.append(images[:32])
    save_png(DOCS / "latent-samples.png", make_grid(torch.cat(grids), nrow=8, scale=2))
    atomic_write_json(ROOT / "results" / "latent.json", report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
