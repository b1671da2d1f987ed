"""Image-to-image tasks on held-out digits (or Fashion-MNIST), judged against the ground truth and by a classifier
trained on the real train split (the acceptance numbers of issue 6).

    python benchmarks/tasks.py sr --n 100 [--factors 2,4] [--configs project:ddim:50,project:ddpm:100,ilvr:ddpm:100]
    python benchmarks/tasks.py sr --data fashion-mnist --model fashion-sr --n 500 --factors 4 --tag fashion \
        --configs none:ddpm:100,project:ddpm:100,project:ddpm:100@fashion
    python benchmarks/tasks.py inpaint --n 300 [--inpaint-configs 50:100:10:1,0:100:10:1,0:250:10:10]
    python benchmarks/tasks.py edit --n 100 [--strengths 0,0.2,0.4,0.6,0.8,1]

sr: PSNR of box-downsampled output vs the low-res input (consistency) and PSNR / SSIM vs the
ground truth, beside bicubic upsampling, and the classifier's accuracy on each.
inpaint: the right half of each digit masked; the classifier's accuracy on the fills of each configuration
(reconstruction weight : steps : jump : resample) beside a random fill (uniform noise), and the unmasked
pixels' largest change (must be <= 1/255).
edit: distance to the input and classifier confidence in the input's class against strength.
Results go to benchmarks/results/tasks-{sr,inpaint,edit}[-TAG].json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from noisecraft import edit, inpaint, load_model, upscale
from noisecraft.data import load_dataset
from noisecraft.eval.classifier import predict_proba, train_classifier
from noisecraft.io import atomic_write_json
from noisecraft.tasks.common import box_down
from noisecraft.tasks.inpaint import model_calls

from digits_quality import digits_judge

RESULTS = Path(__file__).resolve().parent / "results"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR for data in [-1, 1] (peak-to-peak 2), after 8-bit quantization of a."""
    a = ((a.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    mse = (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return float((10 * torch.log10(4 / mse)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004) with a uniform window, data range 2."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    mean = lambda x: F.avg_pool2d(x, window, 1)
    mu_a, mu_b = mean(a), mean(b)
    var_a, var_b, cov = mean(a * a) - mu_a ** 2, mean(b * b) - mu_b ** 2, mean(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def accuracy(clf, x: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict_proba(clf, x.clamp(-1, 1)).argmax(1) == labels).float().mean())


def batched(fn, x: torch.Tensor, batch_size: int, **kw) -> torch.Tensor:
    """fn over batches with image i's generator seeded i, so results do not depend on the batch size."""
    out = []
    for s in range(0, len(x), batch_size):
        gens = [torch.Generator().manual_seed(s + i) for i in range(min(batch_size, len(x) - s))]
        out.append(fn(x[s:s + batch_size], generator=gens, **kw))
    return torch.cat(out)


def run_sr(model, test, clf, args) -> dict:
    gt, labels, size = test.images[:args.n], test.labels[:args.n], model.config.unet.image_size
    models = {args.model: model}
    rows = []
    for f in (int(v) for v in args.factors.split(",")):
        y = box_down(gt, f)
        bicubic = F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
        candidates = [(None, "bicubic", None, 0, bicubic, 0.0)]
        for spec in args.configs.split(","):
            spec, _, name = spec.partition("@")                    # method:sampler:steps[@another model]
            method, sampler, steps = spec.split(":")
            net = models.setdefault(name or args.model, load_model(name) if name else model)
            t0 = time.time()
            x = batched(lambda b, **kw: upscale(net, b, f, method=method, sampler=sampler, steps=int(steps), **kw),
                        y, args.batch_size)
            candidates.append((name or args.model, method, sampler, int(steps), x, time.time() - t0))
        for name, method, sampler, steps, x, seconds in candidates:
            row = {"factor": f, "model": name, "method": method, "sampler": sampler, "steps": steps,
                   "consistency_psnr": psnr(box_down(x.clamp(-1, 1), f), y) if method != "bicubic"
                   else psnr(box_down(x, f), y),
                   "psnr": psnr(x, gt), "ssim": ssim(x.clamp(-1, 1), gt), "accuracy": accuracy(clf, x, labels),
                   "seconds": round(seconds, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"ground_truth_accuracy": accuracy(clf, gt, labels), "rows": rows}


def judge(model, source: str):
    """Train and test splits at the model's size and a CNN trained on the train split: for digits the one every
    digits benchmark uses, for Fashion-MNIST the one of class_adherence.py (8 epochs)."""
    if source == "digits":
        return digits_judge(model)
    c, size = model.config.unet.in_channels, model.config.unet.image_size
    train = load_dataset(source, image_size=size, channels=c, split="train")
    test = load_dataset(source, image_size=size, channels=c, split="test")
    return train, test, train_classifier(train.images, train.labels, len(train.class_names), epochs=8, seed=0)


def run_inpaint(model, test, clf, args) -> dict:
    gt, labels = test.images[:args.n], test.labels[:args.n]
    mask = torch.zeros(1, 1, *gt.shape[-2:])
    mask[..., gt.shape[-1] // 2:] = 1                                     # the right half
    to8 = lambda v: ((v.clamp(-1, 1) + 1) * 127.5).round()
    rows = []
    for spec in args.inpaint_configs.split(","):
        w, steps, jump, resample = (float(v) for v in spec.split(":"))
        t0 = time.time()
        x = batched(lambda b, **kw: inpaint(model, b, mask, steps=int(steps), jump=int(jump), resample=int(resample),
                                            reconstruction=w, **kw), gt, args.batch_size)
        rows.append({"reconstruction": w, "steps": int(steps), "jump": int(jump), "resample": int(resample),
                     "model_calls": model_calls(int(steps), int(jump), int(resample)),
                     "seconds": round(time.time() - t0, 1), "accuracy": accuracy(clf, x, labels),
                     "max_known_change_255": float(((to8(x) - to8(gt)) * (1 - mask)).abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    noise = torch.rand(gt.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    random_fill = mask * noise + (1 - mask) * gt
    return {"rows": rows, "random_fill_accuracy": accuracy(clf, random_fill, labels),
            "ground_truth_accuracy": accuracy(clf, gt, labels)}


def run_edit(model, test, clf, args) -> dict:
    gt, labels = test.images[:args.n], test.labels[:args.n]
    rows = []
    for s in (float(v) for v in args.strengths.split(",")):
        x = batched(lambda b, **kw: edit(model, b, s, sampler="ddpm", steps=args.steps, **kw), gt, args.batch_size)
        probs = predict_proba(clf, x.clamp(-1, 1))
        rows.append({"strength": s, "rms_to_input": float((x - gt).pow(2).flatten(1).mean(1).sqrt().mean()),
                     "confidence_in_input_class": float(probs[torch.arange(len(x)), labels].mean()),
                     "accuracy": float((probs.argmax(1) == labels).float().mean())})
        print(json.dumps(rows[-1]), flush=True)
    return {"sampler": "ddpm", "steps": args.steps, "rows": rows}


def plot_edit(result: dict, path: Path) -> None:
    """Distance to the input and the classifier's confidence in the input's class against SDEdit strength."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = [r["strength"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(strengths, [r["rms_to_input"] for r in result["rows"]], "o-", color="C0")
    ax.set(xlabel="strength", ylabel="RMS distance to the input", title=f"SDEdit on {result['n']} held-out digits")
    right = ax.twinx()
    right.plot(strengths, [r["confidence_in_input_class"] for r in result["rows"]], "s--", color="C1")
    right.set_ylabel("classifier confidence in the input's digit", color="C1")
    right.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=["sr", "inpaint", "edit"])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--data", default="digits", help="digits | fashion-mnist: the held-out images and the judge")
    ap.add_argument("--tag", default="", help="results go to tasks-TASK[-TAG].json")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--factors", default="2,4")
    ap.add_argument("--configs", default="project:ddim:50,project:ddpm:100,ilvr:ddpm:100")
    ap.add_argument("--steps", type=int, default=250, help="edit: DDPM steps")
    ap.add_argument("--inpaint-configs", default="50:100:10:1,0:100:10:1,0:250:10:10")
    ap.add_argument("--strengths", default="0,0.2,0.4,0.6,0.8,1")
    args = ap.parse_args()

    model = load_model(args.model)
    train, test, clf = judge(model, args.data)
    result = {"task": args.task, "model": args.model, "n": args.n, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    result |= {"sr": run_sr, "inpaint": run_inpaint, "edit": run_edit}[args.task](model, test, clf, args)
    result["data"], result["classifier_test_accuracy"] = args.data, accuracy(clf, test.images, test.labels)
    path = atomic_write_json(RESULTS / f"tasks-{args.task}{'-' + args.tag if args.tag else ''}.json", result)
    if args.task == "edit":
        plot_edit(result, RESULTS / "tasks-edit.png")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
