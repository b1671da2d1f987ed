"""models/digits exported to diffusers and sampled by diffusers' DDIMPipeline, judged like digits_quality.py.

One run: export the model (noisecraft export), sample the same per-image noise (image i: seed i) with
diffusers' DDIMPipeline as a diffusers user would (its defaults), with DDIMPipeline recomputing eps from the
clipped x_0 (`use_clipped_model_output=True`, what noisecraft's clipping does), and with noisecraft's own
`ddim`; classify all three with the CNN trained on the real digits. Passes when the classifier's held-out
accuracy is >= 95% and the diffusers samples are >= 85% confident (>= 0.9) with a class histogram within
total variation 0.15 of uniform (the foundation issue's check). Also reports the largest pixel difference
between noisecraft's and diffusers' samples.

    python benchmarks/interop_digits.py --model digits --n 500 --steps 50
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMPipeline

from digits_quality import _summary, digits_judge
from noisecraft import load_model, sample
from noisecraft.eval.classifier import predict_proba
from noisecraft.eval.metrics import class_histogram, confident_fraction, nearest_distances, tv_to_uniform
from noisecraft.interop import export_diffusers
from noisecraft.io import atomic_write_json, save_png
from noisecraft.viz import make_grid

ROOT = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=250)
    args = ap.parse_args()

    model = load_model(args.model)
    c, size = model.config.unet.in_channels, model.config.unet.image_size
    train, test, clf = digits_judge(model)
    test_probs = predict_proba(clf, test.images)
    accuracy = float((test_probs.argmax(1) == test.labels).float().mean())
    report = {"model": args.model, "n": args.n, "steps": args.steps, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "classifier_test_accuracy": accuracy, "runs": {}}
    print(json.dumps({"classifier_test_accuracy": accuracy}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        pipe = DDIMPipeline.from_pretrained(export_diffusers(args.model, Path(tmp) / "digits-diffusers"))
        pipe.set_progress_bar_config(disable=True)
        runs = {
            "diffusers DDIMPipeline": lambda b, gens: pipe(batch_size=b, generator=gens, num_inference_steps=args.steps,
                                                           output_type="pt").images * 2 - 1,
            "diffusers DDIMPipeline, clipped eps": lambda b, gens: pipe(
                batch_size=b, generator=gens, num_inference_steps=args.steps, output_type="pt",
                use_clipped_model_output=True).images * 2 - 1,
            "noisecraft ddim": lambda b, gens: sample(model, (b, c, size, size), sampler="ddim", steps=args.steps,
                                                      generator=gens),
        }
        images = {}
        for name, draw in runs.items():
            t0 = time.time()
            xs = []
            for start in range(0, args.n, args.batch_size):
                b = min(args.batch_size, args.n - start)
                xs.append(draw(b, [torch.Generator().manual_seed(start + i) for i in range(b)]))
            x = images[name] = torch.cat(xs)
            seconds = time.time() - t0
            probs = predict_proba(clf, x)
            hist = class_histogram(probs)
            result = {"confident_fraction": confident_fraction(probs), "tv_to_uniform": tv_to_uniform(hist),
                      "class_histogram": [round(float(h), 4) for h in hist],
                      "nn_distance": _summary(nearest_distances(x, train.images)[0]), "sampling_seconds": round(seconds, 1)}
            report["runs"][name] = result
            print(name, json.dumps(result), flush=True)
    diff = (images["noisecraft ddim"].clamp(-1, 1) - images["diffusers DDIMPipeline, clipped eps"]).abs().max()
    report["max_abs_difference_noisecraft_vs_diffusers_clipped_eps"] = float(diff)
    plain = report["runs"]["diffusers DDIMPipeline"]
    report["pass"] = accuracy >= 0.95 and plain["confident_fraction"] >= 0.85 and plain["tv_to_uniform"] <= 0.15
    print(json.dumps({k: report[k] for k in ("max_abs_difference_noisecraft_vs_diffusers_clipped_eps", "pass")}))
    tag = Path(args.model).name
    save_png(ROOT / "results" / f"interop-{tag}-diffusers-ddim{args.steps}-grid.png",
             make_grid(images["diffusers DDIMPipeline"][:64], nrow=8))
    atomic_write_json(ROOT / "results" / f"interop_digits-{tag}.json", report)
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
