"""Quality per CPU minute: noisecraft against the diffusers training recipe on Fashion-MNIST, in one run.

Both train for the same wall-clock minutes on the same data (the 60,000 train images, 28x28 grey, [-1, 1])
with the same batch size, in alternating segments of --eval-every minutes so that load from other work on
the machine falls on both alike. After each segment both draw --curve-n images with their best 20-call
sampler and we measure FID against the real test set (EfficientNet-Lite0 features, noisecraft.eval); the
training minutes exclude this evaluation. At the end both sample --n images at 20 model calls and
--n-ddpm images with 1000 DDPM steps, scored with FID, KID, precision/recall and the Fashion-MNIST judge.

  noisecraft: noisecraft.train.loop.train with TrainOptions(preset="mnist") and its defaults (AdamW lr 2e-3,
              100 warm-up steps, min-SNR-5 weighting, EMA 0.999); sampled with sampler="auto" (UniPC, trailing
              grid) at 20 steps and "ddpm" at 1000.
  diffusers:  examples/unconditional_image_generation/train_unconditional.py's recipe: UNet2DModel with
              layers_per_block=2 and its block pattern (attention at the second-lowest resolution) scaled to
              28x28 grey with noisecraft's widths (32, 64, 64); DDPMScheduler(1000, "linear"), epsilon MSE;
              AdamW(lr 1e-4, betas (0.95, 0.999), weight decay 1e-6), 500 warm-up steps then cosine decay,
              here over the time budget since a step count is not known in advance; gradient clipping at 1;
              EMAModel(decay 0.9999, warm-up, inv_gamma 1, power 3/4). Sampled with DPMSolverMultistepScheduler
              (DPM-Solver++ 2M, diffusers' default fast sampler) at 20 steps and DDPMScheduler at 1000.

    python benchmarks/quality.py --minutes 30          # the full run: 60 minutes of training, about 2 hours in all
    python benchmarks/quality.py --minutes 0.5 --eval-every 0.25 --n 200 --curve-n 100 --skip-1000 --skip-domain
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from noisecraft import load_model, sample
from noisecraft.data import load_dataset
from noisecraft.eval.domain import domain_metrics
from noisecraft.eval.features import dataset_features, efficientnet_lite0, extract
from noisecraft.eval.fid import compare
from noisecraft.io import atomic_write_json, save_png
from noisecraft.train.checkpoint import load_checkpoint
from noisecraft.train.loop import TrainOptions, train
from noisecraft.viz import make_grid

ROOT = Path(__file__).resolve().parent
DATA = "fashion-mnist"


class NoisecraftRun:
    """noisecraft's own training loop, resumed segment by segment from its checkpoint."""

    name = "noisecraft"

    def __init__(self, out: Path, batch_size: int, seed: int):
        self.out, self.batch_size, self.seed, self.segments = out, batch_size, seed, 0

    def train_for(self, minutes: float) -> None:
        opts = TrainOptions(data=DATA, out=str(self.out), preset="mnist", batch_size=self.batch_size,
                            max_minutes=minutes, checkpoint_every=10 ** 9, sample_every=0, seed=self.seed,
                            resume=self.segments > 0)
        train(opts, log=lambda _: None, progress=False)     # writes the model at the end of every segment
        self.segments += 1

    @property
    def steps(self) -> int:
        return load_checkpoint(self.out).meta["progress"]["step"]

    def params(self) -> int:
        return sum(p.numel() for p in load_model(self.out).parameters())

    def sample(self, n: int, steps: int, ddpm: bool = False, batch_size: int = 250) -> torch.Tensor:
        model = load_model(self.out)
        sampler = "ddpm" if ddpm else "auto"
        return torch.cat([sample(model, (b, 1, 28, 28), sampler=sampler, steps=steps,
                                 generator=[torch.Generator().manual_seed(s + i) for i in range(b)])
                          for s, b in batches(n, batch_size)])


class DiffusersRun:
    """The diffusers recipe (see the module docstring), trained here in the same process."""

    name = "diffusers"

    def __init__(self, batch_size: int, seed: int, budget_minutes: float):
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)
        self.unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                                block_out_channels=(32, 64, 64),
                                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                                           eps=1e-8)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
        self.images = load_dataset(DATA, image_size=28, channels=1, split="train").images       # (N, 1, 28, 28)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.order, self.pos, self.steps = torch.randperm(len(self.images), generator=self.gen), 0, 0
        self.batch_size, self.budget, self.trained_seconds = batch_size, 60 * budget_minutes, 0.0

    def lr(self, trained_seconds: float) -> float:
        """500 linear warm-up steps, then cosine decay to 0 over the time budget."""
        warm = min(1.0, (self.steps + 1) / 500)
        return 1e-4 * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, trained_seconds / self.budget)))

    def train_for(self, minutes: float) -> None:
        self.unet.train()
        start = time.monotonic()
        while time.monotonic() - start < 60 * minutes:
            if self.pos + self.batch_size > len(self.images):
                self.order, self.pos = torch.randperm(len(self.images), generator=self.gen), 0
            x0 = self.images[self.order[self.pos:self.pos + self.batch_size]]
            self.pos += self.batch_size
            noise = torch.randn(x0.shape, generator=self.gen)
            t = torch.randint(0, 1000, (len(x0),), generator=self.gen)
            loss = F.mse_loss(self.unet(self.scheduler.add_noise(x0, noise, t), t).sample, noise)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr(self.trained_seconds + time.monotonic() - start)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
            self.optimizer.step()
            self.ema.step(self.unet.parameters())
            self.steps += 1
        self.trained_seconds += time.monotonic() - start

    def params(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    @torch.no_grad()
    def sample(self, n: int, steps: int, ddpm: bool = False, batch_size: int = 250) -> torch.Tensor:
        from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

        self.unet.eval()
        self.ema.store(self.unet.parameters())
        self.ema.copy_to(self.unet.parameters())                       # sample with the EMA weights
        out = []
        for s, b in batches(n, batch_size):
            sched = (DDPMScheduler if ddpm else DPMSolverMultistepScheduler).from_config(self.scheduler.config)
            sched.set_timesteps(steps)
            x = torch.cat([torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(s + i))
                           for i in range(b)]) * sched.init_noise_sigma
            step_gen = torch.Generator().manual_seed(s)
            for t in sched.timesteps:
                eps = self.unet(sched.scale_model_input(x, t), t).sample
                x = sched.step(eps, t, x, **({"generator": step_gen} if ddpm else {})).prev_sample
            out.append(x.clamp(-1, 1))
        self.ema.restore(self.unet.parameters())
        return torch.cat(out)


def batches(n: int, size: int):
    return [(s, min(size, n - s)) for s in range(0, n, size)]


def score(run, net, real: torch.Tensor, n: int, steps: int, ddpm: bool, domain: bool) -> tuple[dict, torch.Tensor]:
    t0 = time.time()
    x = run.sample(n, steps, ddpm)
    seconds = time.time() - t0
    result = {k: v for k, v in compare(real[:n], extract(net, x)).items() if k != "warnings"}
    result["sampling_seconds"] = round(seconds, 1)
    if domain:
        result["domain"] = domain_metrics(x, DATA)
    return result, x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training minutes for each library")
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes between points of the FID curve")
    ap.add_argument("--n", type=int, default=1000, help="images per final 20-call evaluation")
    ap.add_argument("--curve-n", type=int, default=200, help="images per point of the FID curve")
    ap.add_argument("--n-ddpm", type=int, default=200, help="images per final 1000-step DDPM evaluation")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch size (both)")
    ap.add_argument("--skip-1000", action="store_true", help="leave out the 1000-step DDPM evaluation")
    ap.add_argument("--skip-domain", action="store_true", help="leave out the Fashion-MNIST judge's metrics")
    ap.add_argument("--work", type=Path, default=Path("runs/quality"), help="where noisecraft's run is written")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import diffusers

    if args.work.exists():
        shutil.rmtree(args.work)                                    # a fresh run each time
    net = efficientnet_lite0()
    t_start = time.time()
    real = dataset_features(net, DATA, "test", max(args.n, args.curve_n, 0 if args.skip_1000 else args.n_ddpm),
                            28, 1)
    runs = [NoisecraftRun(args.work / "noisecraft", args.batch_size, args.seed),
            DiffusersRun(args.batch_size, args.seed, args.minutes)]
    curve = {r.name: [] for r in runs}
    segments = max(1, round(args.minutes / args.eval_every))
    for k in range(segments):
        for run in runs:
            t0 = time.monotonic()
            run.train_for(args.minutes / segments)
            trained = time.monotonic() - t0
            point, _ = score(run, net, real, args.curve_n, 20, False, False)
            point.update(minutes=round(args.minutes * (k + 1) / segments, 2), steps=run.steps,
                         segment_seconds=round(trained, 1))
            curve[run.name].append(point)
            print(f"{run.name} {point['minutes']} min, {run.steps} steps: FID {point['fid']:.2f} "
                  f"KID {point['kid']:.4f}", flush=True)
    final = {}
    for run in runs:
        final[run.name] = {"params": run.params(), "steps": run.steps}
        configs = [("20nfe", 20, False, args.n)] + ([] if args.skip_1000 else [("ddpm1000", 1000, True, args.n_ddpm)])
        for label, steps, ddpm, n in configs:
            result, x = score(run, net, real, n, steps, ddpm, not args.skip_domain)
            final[run.name][label] = result
            save_png(ROOT / "results" / f"quality-{run.name}-{label}-grid.png", make_grid(x[:64], nrow=8))
            print(run.name, label, json.dumps(result), flush=True)
    nc, df = final["noisecraft"]["20nfe"]["fid"], final["diffusers"]["20nfe"]["fid"]
    report = {"data": DATA, "minutes": args.minutes, "eval_every": args.eval_every, "batch_size": args.batch_size,
              "n": args.n, "curve_n": args.curve_n, "n_ddpm": None if args.skip_1000 else args.n_ddpm,
              "reference": f"{DATA} test split, {len(real)} images", "feature_network": net.name,
              "samplers": {"noisecraft": {"20nfe": "auto (UniPC, trailing grid), 20 steps", "ddpm1000": "ddpm, 1000 steps"},
                           "diffusers": {"20nfe": "DPMSolverMultistepScheduler (DPM-Solver++ 2M), 20 steps",
                                         "ddpm1000": "DDPMScheduler, 1000 steps"}},
              "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "curve": curve, "final": final,
              "fid_ratio_20nfe": nc / df, "seconds": round(time.time() - t_start, 1),
              "command": "python benchmarks/quality.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (
                  ("minutes", args.minutes), ("eval_every", args.eval_every), ("n", args.n), ("curve_n", args.curve_n),
                  ("n_ddpm", args.n_ddpm))) + (" --skip-1000" if args.skip_1000 else "")
                  + (" --skip-domain" if args.skip_domain else "")}
    atomic_write_json(ROOT / "results" / "quality.json", report)
    print(f"FID at 20 calls after {args.minutes:g} minutes: noisecraft {nc:.2f}, diffusers {df:.2f} "
          f"(ratio {nc / df:.2f})")


if __name__ == "__main__":
    main()
