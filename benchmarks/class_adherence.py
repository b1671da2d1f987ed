"""Class adherence of a class-conditional model, judged by a classifier trained on the real data.

A SmallCNN is trained on the source's train split (its test accuracy is reported); the model draws
`--per-class` images of every class with the default sampler ("auto") at each guidance scale, and we
report the share the classifier labels as the requested class, per class and overall, and per class the
Frechet distance between the classifier's features (penultimate layer) of the samples and of the real
test images of that class.

    python benchmarks/class_adherence.py --model runs/fashion --data fashion-mnist [--guidance 1,2,3,4]
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
from noisecraft.eval.analytic import frechet_distance
from noisecraft.eval.classifier import predict_proba, train_classifier
from noisecraft.io import atomic_write_json, save_png
from noisecraft.viz import make_grid

ROOT = Path(__file__).resolve().parent


@torch.no_grad()
def features(clf, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([clf.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double()


def frechet_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets."""
    return frechet_distance(a, b.mean(0), torch.cov(b.T))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--guidance", default=None, help="comma-separated scales (default: the model's own)")
    ap.add_argument("--steps", type=int, default=None, help="model calls per image before guidance (auto's default)")
    ap.add_argument("--epochs", type=int, default=8, help="classifier training epochs")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    model = load_model(args.model)
    tag = args.tag or Path(args.model).name
    c, size = model.config.unet.in_channels, model.config.unet.image_size
    train = load_dataset(args.data, image_size=size, channels=c, split="train")
    test = load_dataset(args.data, image_size=size, channels=c, split="test")
    t0 = time.time()
    clf = train_classifier(train.images, train.labels, len(train.class_names), epochs=args.epochs, seed=0)
    test_acc = float((predict_proba(clf, test.images).argmax(1) == test.labels).float().mean())
    report = {"model": args.model, "data": args.data, "per_class": args.per_class, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "classifier": {"test_accuracy": test_acc, "epochs": args.epochs, "seconds": round(time.time() - t0, 1)},
              "guidance": {}}
    print(json.dumps(report["classifier"]), flush=True)
    real = {k: features(clf, test.images[test.labels == k]) for k in range(len(test.class_names))}
    scales = [float(g) for g in args.guidance.split(",")] if args.guidance else [model.config.guidance]
    names = model.config.class_names
    for g in scales:
        t0 = time.time()
        labels = torch.arange(len(names)).repeat_interleave(args.per_class)
        xs = []
        for start in range(0, len(labels), 250):
            y = labels[start:start + 250]
            gens = [torch.Generator().manual_seed(start + i) for i in range(len(y))]
            xs.append(sample(model, (len(y), c, size, size), sampler="auto", steps=args.steps, generator=gens,
                             cond={"class_labels": y}, guidance_scale=g))
        x = torch.cat(xs)
        pred = predict_proba(clf, x).argmax(1)
        feats = features(clf, x)
        per_class = {names[k]: {"adherence": float((pred[labels == k] == k).float().mean()),
                                "frechet": frechet_between(feats[labels == k], real[k])} for k in range(len(names))}
        result = {"adherence": float((pred == labels).float().mean()), "per_class": per_class,
                  "sampling_seconds": round(time.time() - t0, 1)}
        report["guidance"][str(g)] = result
        print(f"guidance {g}: adherence {result['adherence']:.3f}", json.dumps(per_class), flush=True)
        pick = torch.cat([torch.nonzero(labels == k).flatten()[:8] for k in range(len(names))])
        save_png(ROOT / "results" / f"{tag}-guidance{g:g}-grid.png", make_grid(x[pick], nrow=8))
    atomic_write_json(ROOT / "results" / f"class_adherence-{tag}.json", report)


if __name__ == "__main__":
    main()
