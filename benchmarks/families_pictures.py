"""The pictures and measurements of docs/families.md: VAE reconstructions and latent interpolations, the class
coverage of the shipped VAE, GAN and autoregressive models, and the autoregressive model's sampling time
against image size.

    python benchmarks/digits_quality.py --model digits-{vae,gan,ar} --n 500     # first: the class histograms
    python benchmarks/families_pictures.py [--vae digits-vae] [--gan digits-gan] [--ar digits-ar]

Writes docs/images/families-{vae,coverage,gan-classes,ar-time}.png and
benchmarks/results/families-{bits,coverage,ar-time}.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import matplotlib
import torch

from noisecraft import load_model
from noisecraft.baselines.autoregressive import PixelCNN
from noisecraft.baselines.common import dequantize, quantize
from noisecraft.data import load_dataset
from noisecraft.eval.classifier import predict_proba
from noisecraft.eval.metrics import confident_fraction
from noisecraft.io import atomic_write_json, save_png
from noisecraft.viz import figure_png, make_grid

from digits_quality import digits_judge

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ROOT = Path(__file__).resolve().parent
IMAGES, RESULTS = ROOT.parent / "docs" / "images", ROOT / "results"
PAIRS = [(0, 6), (1, 7), (2, 3), (4, 9), (5, 8)]        # test digits whose classes the interpolation walks between
STEPS = 10
SIZES = (8, 12, 16, 28)


def first_of_each_class(data) -> torch.Tensor:
    """The first held-out test image of each digit 0..9, (10, C, H, W)."""
    return data.images[[int((data.labels == k).nonzero()[0, 0]) for k in range(10)]]


@torch.no_grad()
def bits_on_digits(vae, ar) -> dict:
    """Bits per dimension on the real digits' test and train splits (over-fitting shows as the gap): the VAE's
    upper bound (the ELBO with beta 1, one posterior draw per image from seed 0) at its levels, and the
    PixelCNN's exact figure at its K levels."""
    report = {}
    for family, model in (("vae", vae), ("autoregressive", ar)):
        c, size, _ = model.config.image_shape
        report[family] = {"levels": model.config.levels, "exact": family == "autoregressive"}
        for split in ("test", "train"):
            x = load_dataset("digits", image_size=size, channels=c, split=split).images
            bits = model.bits_per_dim(x, torch.Generator().manual_seed(0))                       # (N,)
            report[family][split] = round(float(bits.mean()), 4)
    atomic_write_json(RESULTS / "families-bits.json", report)
    return report


@torch.no_grad()
def vae_picture(vae) -> None:
    """Row 1: held-out digits; row 2: their reconstructions (the decoder mean at the posterior mean); then one
    row per pair: the decoder mean along the straight line between the two posterior means."""
    c, size, _ = vae.config.image_shape
    x = first_of_each_class(load_dataset("digits", image_size=size, channels=c, split="test"))   # (10, C, H, W)
    mu, _ = vae.encode(x)                                                                        # (10, latent)
    recon = vae.decode(mu).clamp(-1, 1)
    t = torch.linspace(0, 1, STEPS)[:, None]                                                     # (STEPS, 1)
    walks = [vae.decode((1 - t) * mu[a] + t * mu[b]).clamp(-1, 1) for a, b in PAIRS]             # (STEPS, C, H, W) each
    save_png(IMAGES / "families-vae.png", make_grid(torch.cat([x, recon, *walks]), nrow=STEPS),
             {"rows": "held-out digits 0-9; their VAE reconstructions; then latent interpolations "
                      + ", ".join(f"{a}->{b}" for a, b in PAIRS)})


@torch.no_grad()
def coverage_picture(names: dict[str, str], gan, ar, judge, test) -> dict:
    """A bar chart of each family's predicted-class histogram over its 500 samples (from digits_quality's
    results), and the GAN's first 10 samples judged as each digit, one row per digit. Beside them, the
    judge's confident share on the real test digits as they are and quantized to the PixelCNN's K levels."""
    hists = {}
    for family, name in names.items():
        path = RESULTS / f"digits_quality-{name}.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run benchmarks/digits_quality.py --model {name} --n 500 first")
        result = json.loads(path.read_text())["samplers"]["own:0"]
        hists[family] = {"model": name, "class_histogram": result["class_histogram"],
                         "tv_to_uniform": result["tv_to_uniform"], "confident_fraction": result["confident_fraction"]}
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / len(hists)
    for i, (family, h) in enumerate(hists.items()):
        ax.bar([k + (i - (len(hists) - 1) / 2) * width for k in range(10)], h["class_histogram"], width,
               label=f"{family} ({h['model']}, TV {h['tv_to_uniform']:.3f})")
    ax.axhline(0.1, color="grey", lw=0.8, ls="--")
    ax.set(xticks=range(10), xlabel="digit the judge predicts", ylabel="share of 500 samples",
           title="class coverage of 500 samples (seeds 0-499)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    (IMAGES / "families-coverage.png").write_bytes(figure_png(fig))

    levels = ar.config.levels
    quantized = dequantize(quantize(test.images, levels), levels)
    real = {"as_is": confident_fraction(predict_proba(judge, test.images)),
            f"quantized_to_{levels}_levels": confident_fraction(predict_proba(judge, quantized))}
    x = gan.sample(500, [torch.Generator().manual_seed(s) for s in range(500)])                 # (500, C, H, W)
    pred = predict_proba(judge, x).argmax(1)
    blank = -torch.ones_like(x[:1])
    rows = [torch.cat([x[pred == k][:STEPS], blank.expand(max(0, STEPS - int((pred == k).sum())), -1, -1, -1)])
            for k in range(10)]
    save_png(IMAGES / "families-gan-classes.png", make_grid(torch.cat(rows), nrow=STEPS),
             {"rows": "GAN samples (seeds 0-499, in seed order) that the digits judge calls 0, 1, ..., 9"})
    report = {"families": hists, "gan_judged_counts": torch.bincount(pred, minlength=10).tolist(),
              "judge_confident_on_real_test": real}
    atomic_write_json(RESULTS / "families-coverage.json", report)
    return report


@torch.no_grad()
def ar_time(ar, vae, gan, n: int = 16) -> dict:
    """Seconds per image to sample n images in one batch with the shipped PixelCNN's weights at each size (the
    network is fully convolutional, so the same weights run at any size; the time does not depend on what
    they learned), beside the VAE's and the GAN's at their trained size."""
    def timed(model, size_n: int) -> float:
        model.sample(2, [torch.Generator().manual_seed(s) for s in range(2)])                  # warm-up
        t0 = time.perf_counter()
        model.sample(size_n, [torch.Generator().manual_seed(s) for s in range(size_n)])
        return (time.perf_counter() - t0) / size_n

    rows = []
    for size in SIZES:
        net = PixelCNN(dataclasses.replace(ar.config, image_size=size)).eval()
        net.load_state_dict(ar.state_dict())
        rows.append({"size": size, "network_calls": size * size, "seconds_per_image": round(timed(net, n), 4)})
    report = {"n": n, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "autoregressive": rows,
              "vae_seconds_per_image": round(timed(vae, n), 6), "gan_seconds_per_image": round(timed(gan, n), 6),
              "trained_size": ar.config.image_size}
    atomic_write_json(RESULTS / "families-ar-time.json", report)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    pixels = [r["size"] ** 2 for r in rows]
    ax.loglog(pixels, [r["seconds_per_image"] for r in rows], "o-", label="autoregressive (H*W network calls)")
    for r in rows:
        ax.annotate(f"{r['size']}x{r['size']}", (r["size"] ** 2, r["seconds_per_image"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)
    ax.axhline(report["gan_seconds_per_image"], color="C1", ls="--", label=f"GAN at {gan.config.image_size}x{gan.config.image_size}")
    ax.axhline(report["vae_seconds_per_image"], color="C2", ls=":", label=f"VAE at {vae.config.image_size}x{vae.config.image_size}")
    ax.set(xlabel="pixels per image", ylabel="seconds per image",
           title=f"sampling time, batch of {n}, {report['threads']} CPU thread(s)")
    ax.set_xticks(pixels, [str(p) for p in pixels], minor=False)
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    (IMAGES / "families-ar-time.png").write_bytes(figure_png(fig))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="digits-vae")
    ap.add_argument("--gan", default="digits-gan")
    ap.add_argument("--ar", default="digits-ar")
    args = ap.parse_args()
    vae, gan, ar = load_model(args.vae), load_model(args.gan), load_model(args.ar)
    _, test, judge = digits_judge(gan)
    print(json.dumps(bits_on_digits(vae, ar)), flush=True)
    vae_picture(vae)
    names = {"vae": args.vae, "gan": args.gan, "autoregressive": args.ar}
    print(json.dumps(coverage_picture(names, gan, ar, judge, test)), flush=True)
    print(json.dumps(ar_time(ar, vae, gan)), flush=True)


if __name__ == "__main__":
    main()
