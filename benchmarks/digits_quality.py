"""Quality of a digits model, judged by a classifier trained on the real digits.

For each sampler: the share of samples classified with confidence >= 0.9, the predicted-class
histogram and its total variation distance to uniform, and each sample's distance to its nearest
training image (beside the same distance for held-out real digits, so copies would show).

    python benchmarks/digits_quality.py --model digits --n 500 [--samplers ddpm:1000,ddim:50,unipc:10:logsnr]
    python benchmarks/digits_quality.py --model digits-gan --n 500     # a VAE, GAN or autoregressive model: its own sampler
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from noisecraft import load_model, sample
from noisecraft.data import load_dataset
from noisecraft.eval.classifier import predict_proba, train_classifier
from noisecraft.eval.metrics import class_histogram, confident_fraction, nearest_distances, tv_to_uniform
from noisecraft.io import atomic_write_json, save_png
from noisecraft.viz import make_grid

ROOT = Path(__file__).resolve().parent


def digits_judge(model):
    """The real digits at the model's size (train and test splits) and the CNN trained on the train split that
    judges samples in every digits benchmark."""
    c, size, _ = model.config.image_shape
    train = load_dataset("digits", image_size=size, channels=c, split="train")
    test = load_dataset("digits", image_size=size, channels=c, split="test")
    return train, test, train_classifier(train.images, train.labels, 10, epochs=30, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--samplers", default="ddpm:1000,ddim:50")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--tag", default=None, help="name of the results file (default: the model name)")
    args = ap.parse_args()
    tag = args.tag or Path(args.model).name

    model = load_model(args.model)
    c, size, _ = model.config.image_shape
    baseline = hasattr(model, "model_config")              # a VAE, GAN or autoregressive model: its own sampler
    t0 = time.time()
    train, test, clf = digits_judge(model)
    test_probs = predict_proba(clf, test.images)
    report = {
        "model": args.model, "n": args.n, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "classifier": {"test_accuracy": float((test_probs.argmax(1) == test.labels).float().mean()),
                       "test_confident_fraction": confident_fraction(test_probs), "n_train": len(train.images),
                       "n_test": len(test.images), "seconds": round(time.time() - t0, 1)},
        "real_heldout_nn_distance": _summary(nearest_distances(test.images, train.images)[0]),
        "samplers": {},
    }
    print(json.dumps(report["classifier"]), flush=True)
    for spec in ["own:0"] if baseline else args.samplers.split(","):
        name, steps, *spacing = spec.split(":")              # name:steps or name:steps:spacing
        t0 = time.time()
        xs = []
        for start in range(0, args.n, args.batch_size):
            b = min(args.batch_size, args.n - start)
            gens = [torch.Generator().manual_seed(start + i) for i in range(b)]
            xs.append(model.sample(b, gens) if baseline else
                      sample(model, (b, c, size, size), sampler=name, steps=int(steps),
                             spacing=spacing[0] if spacing else None, generator=gens))
        x = torch.cat(xs)
        seconds = time.time() - t0
        probs = predict_proba(clf, x)
        hist = class_histogram(probs)
        dist, idx = nearest_distances(x, train.images)
        result = {"steps": int(steps), "confident_fraction": confident_fraction(probs),
                  "class_histogram": [round(float(h), 4) for h in hist], "tv_to_uniform": tv_to_uniform(hist),
                  "nn_distance": _summary(dist), "nn_distance_per_sample": [round(float(d), 4) for d in dist],
                  "sampling_seconds": round(seconds, 1)}
        report["samplers"][spec] = result
        print(spec, json.dumps({k: v for k, v in result.items() if k != "nn_distance_per_sample"}), flush=True)
        save_png(ROOT / "results" / f"{tag}-{name}{steps}{''.join(spacing)}-grid.png", make_grid(x[:64], nrow=8))
        closest = dist.argsort()[:8]
        pairs = torch.stack([torch.stack([x[i], train.images[idx[i]]]) for i in closest]).flatten(0, 1)
        save_png(ROOT / "results" / f"{tag}-{name}{steps}{''.join(spacing)}-nearest.png", make_grid(pairs, nrow=2))
    atomic_write_json(ROOT / "results" / f"digits_quality-{tag}.json", report)


def _summary(d: torch.Tensor) -> dict:
    return {"min": float(d.min()), "median": float(d.median()), "mean": float(d.mean())}


if __name__ == "__main__":
    main()
