"""Speed on this machine: noisecraft's UNet against a diffusers UNet2DModel of the same FLOPs, in one run.

The two networks are the `small` preset (32x32 RGB, 64-128-128 channels, two ResBlocks per level,
attention at 16x16 and 8x8) and a UNet2DModel with the same layout; their FLOPs per image are counted
with torch's FlopCounterMode (convolutions, matrix products, attention) and must agree within 10%.

Measured, each as the best of several timed repeats after warm-up, alternating the libraries, in two rounds
(the better one counts):
  - the machine's ceiling: GFLOP/s of large convolutions (channels_last, the faster layout) and of a
    2048^3 matrix product, in fp32 and bf16;
  - forward images/s at batch 1, 16 and 64 (inference_mode); training images/s (forward, backward and
    an AdamW step at batch 32); end-to-end sampling of 64 images with 20 DPM-Solver++(2M) steps, and of
    1 image (the latency of one picture: what a person at the web page waits for);
  - peak memory of a batch-64 forward and a batch-32 training step, two ways, each the median of 7 fresh
    processes: the resident-set growth (what the operating system sees; single readings of one
    configuration spread over 100 MB, as glibc's malloc reuses freed blocks differently from run to run)
    and the peak of live tensors (the profiler's count of allocations and frees: exact and repeatable);
    and the resident growth again, the median of 3, with glibc's mmap threshold fixed at 1 MB (FIXED_MMAP:
    repeatable within a few MB) for noisecraft and diffusers in fp32 and bf16;
  - each figure as achieved GFLOP/s and as a share of the ceiling of its precision;
  - levers alone: PyTorch's fused attention kernel, the explicit product and noisecraft's attention kernels
    in a bf16 training step, and the compiled kernels on and off in one process (the bf16 Winograd products;
    the attention kernels in fp32 and bf16; the fused GroupNorm + SiLU in fp32 and bf16) on the forward at
    batch 16 and the training step.
The timings run in one process that keeps freed memory (noisecraft.device.keep_freed_memory(), as the command
line runs; both libraries), the memory probes in fresh processes with glibc's default malloc.

Configurations: noisecraft as shipped (fp32, channels_last, Winograd 3x3 convolutions, fused GroupNorm +
SiLU, its own attention kernels), noisecraft-direct (the same with PyTorch's direct convolutions: the Winograd lever alone), noisecraft
bf16 autocast (with bf16 Winograd products and attention where the CPU has AVX-512 BF16),
noisecraft with torch.compile (forward at batch 16 only: compiling costs about 30 s per shape; compiled
graphs keep the Winograd kernels as custom operators), diffusers as shipped (fp32, NCHW), and diffusers given channels_last
too (a reference a diffusers user could reach). FLOPs are the direct convolution's (Winograd does 4x fewer
multiplications in the 3x3 layers, so its share of the direct ceiling can pass 100%).

The bf16 path's quality is checked on the shipped `fashion` model: 500 class-conditional samples (50
per class; sample()'s default DDIM with 50 steps, the model's guidance 2) in fp32 and in bf16 from the
same noise, and fp32 from other noise (seed-to-seed noise, the yardstick): classifier accuracy for the
requested class and FID against the test split.

On a CPU without bf16 instructions (noisecraft.device.cpu_has_bf16: no AVX-512 BF16, AMX or aarch64 BF16)
bf16 is emulated through fp32, many times slower; there the run measures the bf16 ceiling only (which shows
by how much) and skips the bf16 configurations, the bf16 lever, the presets' fp32/bf16 table and the
quality check.

    python benchmarks/speed.py [--repeats 5] [--no-quality]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from noisecraft.device import cpu_has_bf16, keep_freed_memory, speed_up
from noisecraft.io import atomic_write_json
from noisecraft.models import DiffusionModel, ModelConfig
from noisecraft.nets import PRESETS
from noisecraft.nets import norm_act, sdpa, winograd
from noisecraft.nets.layers import attention
from noisecraft.train.loop import adamw

ROOT = Path(__file__).resolve().parent
PRESET = "small"
BATCHES = (1, 16, 64)
TRAIN_BATCH, SAMPLE_SIZES, SAMPLE_STEPS = 32, (64, 1), 20
MEMORY_PROBES = 7
# The resident peak again with glibc's mmap threshold fixed at 1 MB, so that every block of that size or more
# is mapped when its tensor is made and unmapped when it dies: the readings then repeat within a few MB
# (docs/training.md), what the step needs rather than how the heap happened to fragment.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
FIXED_PROBES, FIXED_NAMES = 3, ("noisecraft", "noisecraft-bf16", "diffusers", "diffusers-bf16")
ROUNDS = 2


# -- the two networks ------------------------------------------------------------------------------------------
def noisecraft_model(precision: str = "fp32") -> DiffusionModel:
    torch.manual_seed(0)
    return speed_up(DiffusionModel(ModelConfig(unet=PRESETS[PRESET])), precision)


def diffusers_unet(channels_last: bool = False):
    """UNet2DModel laid out like the `small` preset: the same widths, blocks per level and attention levels."""
    from diffusers import UNet2DModel

    cfg = PRESETS[PRESET]
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
                      block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mult),
                      layers_per_block=cfg.num_res_blocks, attention_head_dim=cfg.head_dim,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    return net.to(memory_format=torch.channels_last) if channels_last else net


class Diffusers(torch.nn.Module):
    """The UNet2DModel behind noisecraft's model protocol, for timing: model(x, t) -> tensor."""

    def __init__(self, channels_last: bool = False, precision: str = "fp32"):
        super().__init__()
        self.net, self.channels_last, self.precision = diffusers_unet(channels_last), channels_last, precision

    def forward(self, x, t):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.net(x, t).sample.float()


def build(name: str) -> torch.nn.Module:
    return {"noisecraft": lambda: noisecraft_model("fp32"), "noisecraft-bf16": lambda: noisecraft_model("bf16"),
            "noisecraft-direct": lambda: noisecraft_model("fp32"),
            "noisecraft-compile": lambda: noisecraft_model("fp32"), "diffusers": lambda: Diffusers(),
            "diffusers-channels_last": lambda: Diffusers(channels_last=True),
            "diffusers-bf16": lambda: Diffusers(channels_last=True, precision="bf16")}[name]()


def inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = PRESETS[PRESET]
    g = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g),
            torch.randint(0, 1000, (batch,), generator=g).float())


def flops_per_image(model: torch.nn.Module) -> float:
    """The direct convolution's and attention's FLOPs (the compiled kernels run outside torch's operators,
    unseen by the counter)."""
    x, t = inputs(2)
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), winograd.disabled(), sdpa.disabled():
        model(x, t)
    return counter.get_total_flops() / 2


# -- timing ------------------------------------------------------------------------------------------------------
def as_run(name: str, fn):
    """fn as configuration `name` runs it: noisecraft-direct with the Winograd convolutions switched off."""
    if name != "noisecraft-direct":
        return fn

    def run():
        with winograd.disabled():
            return fn()
    return run


def best_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def forward_fn(model, batch: int):
    x, t = inputs(batch)

    def run():
        with torch.inference_mode():
            model(x, t)
    return run


def train_fn(model, batch: int):
    """One training step as each library's training loop runs it: forward, MSE to the noise, backward,
    AdamW (noisecraft's trainer fuses it where PyTorch can, noisecraft.train.loop.adamw; diffusers' training
    scripts take torch.optim.AdamW's default)."""
    x, t = inputs(batch)
    eps = torch.randn_like(x)
    model.train()
    opt = (adamw(model.parameters(), 1e-4, 1e-2) if isinstance(model, DiffusionModel)
           else torch.optim.AdamW(model.parameters(), lr=1e-4))

    def run():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x, t), eps).backward()
        opt.step()
    return run


def sample_fn(name: str, model, n: int):
    """n images, 20 DPM-Solver++(2M) steps: noisecraft.sample, or diffusers' scheduler loop as its pipelines run it."""
    if name.startswith("noisecraft"):
        from noisecraft import sample

        return lambda: sample(model, (n, 3, 32, 32), sampler="dpmpp_2m", steps=SAMPLE_STEPS,
                              generator=torch.Generator().manual_seed(0))
    from diffusers import DPMSolverMultistepScheduler

    def run():
        scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(SAMPLE_STEPS)
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t.float().expand(n)), t, x).prev_sample
        return x
    return run


def ceiling(repeats: int, bf16: bool = True) -> dict:
    """GFLOP/s of the fastest big convolution and of a big matrix product, per precision. Where the CPU
    emulates bf16 (bf16=False), its matrix product is timed at 1024^3 once: at 2048^3 one call takes a minute."""
    out = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m, r = (2048, repeats) if bf16 or label == "fp32" else (1024, 1)
        a, b = torch.randn(m, m, dtype=dtype), torch.randn(m, m, dtype=dtype)
        matmul = 2 * m ** 3 / best_seconds(lambda: a @ b, r) / 1e9
        conv = 0.0
        for ch, size in ((128, 32), (256, 16)):
            layer = torch.nn.Conv2d(ch, ch, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)
            x = torch.randn(16, ch, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                s = best_seconds(lambda: layer(x), repeats)
            conv = max(conv, 2 * 16 * ch * ch * 9 * size * size / s / 1e9)
        out[label] = {"conv_gflops": conv, "matmul_gflops": matmul, "ceiling_gflops": max(conv, matmul)}
    return out


# -- the levers one at a time ---------------------------------------------------------------------------------------
def levers(repeats: int) -> dict:
    """Three attentions in a bf16 training step (forward and backward) at the preset's attention shapes
    (batch 32): PyTorch's fused kernel, the explicit product (where noisecraft's kernels do not apply) and
    noisecraft's kernels (sdpa.py); and the compiled kernels on and off (kernel_levers)."""
    out = {"attention_bf16_train": []}
    cfg = PRESETS[PRESET]
    for res in cfg.attn_resolutions:
        ch = cfg.base_channels * cfg.channel_mult[[cfg.image_size // 2 ** i for i in range(len(cfg.channel_mult))].index(res)]
        heads, n = max(1, ch // cfg.head_dim), res * res
        q, k, v = (torch.randn(TRAIN_BATCH, heads, n, ch // heads, requires_grad=True) for _ in range(3))

        def step(how: str):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                qq, kk, vv = (a.bfloat16() for a in (q, k, v))
                if how == "fused":
                    o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv)
                else:
                    with sdpa.disabled() if how == "explicit" else contextlib.nullcontext():
                        o = attention(qq, kk, vv)
            o.float().sum().backward()
        ms = {how: best_seconds(lambda: step(how), repeats) * 1e3 for how in ("fused", "explicit", "kernel")}
        out["attention_bf16_train"].append({"tokens": n, "heads": heads, "fused_ms": ms["fused"],
                                            "explicit_ms": ms["explicit"], "kernel_ms": ms["kernel"],
                                            "speedup": ms["fused"] / ms["explicit"]})
    out["kernels"] = kernel_levers(repeats)
    return out


def kernel_levers(repeats: int, rounds: int = 2) -> list:
    """The compiled kernels on and off in one process, alternating, best of `rounds`: the bf16 Winograd
    products (off: oneDNN's direct bf16 convolutions), the attention kernels (off: PyTorch's fused kernel in
    fp32, the explicit product in bf16) and
    the fused GroupNorm + SiLU (off: the ops one by one),
    on the forward at batch 16 and the training step at batch 32."""
    out = []
    for precision, lever, switch in (("bf16", "winograd_bf16", winograd.disabled), ("fp32", "sdpa", sdpa.disabled),
                                     ("bf16", "sdpa", sdpa.disabled),
                                     ("fp32", "norm_act", norm_act.disabled),
                                     ("bf16", "norm_act", norm_act.disabled)):
        row = {"precision": precision, "lever": lever}
        for key, batch, fn in (("forward_b16", 16, forward_fn(noisecraft_model(precision), 16)),
                               ("train_b32", TRAIN_BATCH, train_fn(noisecraft_model(precision), TRAIN_BATCH))):
            on = off = float("inf")
            for _ in range(rounds):
                on = min(on, best_seconds(fn, repeats))
                with switch():
                    off = min(off, best_seconds(fn, repeats))
            row[key] = {"on": batch / on, "off": batch / off, "speedup": off / on}
        out.append(row)
    return out


# -- peak memory, each in a fresh process --------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak since the last reset)."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])


def peak_memory_mb(name: str, mode: str, malloc_env: dict | None = None) -> tuple[float, float]:
    """Two peaks (MB) of a batch-64 forward or a batch-32 training step in a fresh process: the resident-set
    growth over two calls, after the model is built (clear_refs 5, so imports and construction do not
    count), then the peak of live tensors during a third call. malloc_env: glibc settings for that process."""
    out = subprocess.run([sys.executable, __file__, "--memory-probe", f"{name}:{mode}"], capture_output=True,
                         text=True, check=True, env={**os.environ, **(malloc_env or {})})
    rss, tensors = out.stdout.strip().splitlines()[-1].split()
    return float(rss), float(tensors)


def tensor_peak_mb(fn) -> float:
    """The peak of live tensor memory during fn(), above what lived before it, from the profiler's record of
    every allocation and free (the CPU's counterpart of torch.cuda.max_memory_allocated): unlike the
    resident set, it does not depend on how the C library's malloc reuses freed blocks, and it repeats
    exactly from run to run."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def memory_probe(spec: str) -> None:
    name, mode = spec.split(":")
    model = build(name)
    fn = as_run(name, forward_fn(model, 64) if mode == "forward" else train_fn(model, TRAIN_BATCH))
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    fn()
    fn()
    print((_status_kb("VmHWM") - before) / 1024, tensor_peak_mb(fn))


def preset_precision(repeats: int) -> dict:
    """fp32 against bf16 for the shipped models' presets (32 channels): forward b64 and training b32 images/s."""
    out = {}
    for preset in ("tiny", "mnist", "shapes"):
        cfg = PRESETS[preset]
        row = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = speed_up(DiffusionModel(ModelConfig(unet=cfg)), precision)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(64, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
            t = torch.randint(0, 1000, (64,), generator=g).float()

            def forward():
                with torch.inference_mode():
                    model(x, t)
            opt = adamw(model.parameters(), 1e-4, 1e-2)

            def train():
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.mse_loss(model(x[:TRAIN_BATCH], t[:TRAIN_BATCH]), x[:TRAIN_BATCH]).backward()
                opt.step()
            row[f"{precision}_forward_b64"] = 64 / best_seconds(forward, repeats)
            row[f"{precision}_train_b32"] = TRAIN_BATCH / best_seconds(train, repeats)
        out[preset] = row
    return out


# -- quality of the bf16 path ----------------------------------------------------------------------------------------
def bf16_quality(n_per_class: int = 50) -> dict:
    from noisecraft import load_model, sample
    from noisecraft.eval.classifier import predict_proba
    from noisecraft.eval.domain import domain_judge
    from noisecraft.eval.features import feature_net
    from noisecraft.eval.fid import evaluate

    model = load_model("fashion")
    labels = torch.arange(10).repeat_interleave(n_per_class)
    judge, judge_acc = domain_judge("fashion-mnist", 28, 1)
    features = feature_net()
    runs = {}
    for label, precision, first_seed in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("fp32-other-noise", "fp32", 10_000)):
        speed_up(model, precision)
        gens = [torch.Generator().manual_seed(first_seed + i) for i in range(len(labels))]
        t0 = time.perf_counter()
        x = torch.cat([sample(model, (100, 1, 28, 28), generator=gens[i:i + 100],
                              cond={"class_labels": labels[i:i + 100]}, guidance_scale=model.config.guidance)
                       for i in range(0, len(labels), 100)])
        seconds = time.perf_counter() - t0
        accuracy = float((predict_proba(judge, x).argmax(1) == labels).double().mean())
        fid = evaluate(x, "fashion-mnist", features, split="test", domain=False)["fid"]
        runs[label] = {"class_accuracy": accuracy, "fid": fid, "seconds": seconds, "images": x}
    diff = (runs["fp32"]["images"] - runs["bf16"]["images"]).abs()
    out = {"n": len(labels), "judge_test_accuracy": judge_acc,
           "max_abs_pixel_difference_bf16_vs_fp32": float(diff.max()),
           "mean_abs_pixel_difference_bf16_vs_fp32": float(diff.mean())}
    for label, r in runs.items():
        out[label] = {k: v for k, v in r.items() if k != "images"}
    return out


# -- the run ------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-quality", action="store_true", help="skip the bf16 quality check")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    # The timings run with glibc's malloc keeping freed memory, as noisecraft's command line runs
    # (docs/training.md): no page faults for the tensors each call allocates. diffusers runs with it too and
    # gains from it as well, so no ratio counts it for noisecraft alone. The memory probes are fresh
    # processes with glibc's default malloc: each library's resident set as it comes.
    malloc = "kept" if keep_freed_memory() else "default"

    # Where the CPU has no bf16 instructions, oneDNN emulates bf16 through fp32, many times slower (the
    # ceiling below shows by how much): its configurations would take hours and say nothing new.
    bf16 = cpu_has_bf16() is not False
    if not args.no_quality and bf16:                    # its data, checked before 15 minutes of timing
        from noisecraft.data import load_dataset
        from noisecraft.errors import NoisecraftError
        try:
            load_dataset("fashion-mnist", image_size=28, channels=1, split="test")
        except NoisecraftError as e:
            raise SystemExit(f"the bf16 quality check needs Fashion-MNIST: {e} (or pass --no-quality)")

    names = ["noisecraft", "noisecraft-direct", "noisecraft-bf16", "diffusers", "diffusers-channels_last",
             "diffusers-bf16"]
    if not bf16:
        names = [name for name in names if not name.endswith("bf16")]
    models = {name: build(name) for name in names}
    flops = {name: flops_per_image(models[name]) for name in ("noisecraft", "diffusers")}
    params = {name: sum(p.numel() for p in models[name].parameters()) for name in ("noisecraft", "diffusers")}
    if abs(flops["diffusers"] / flops["noisecraft"] - 1) > 0.10:
        raise SystemExit(f"FLOPs differ by more than 10%: {flops}")
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats, "rounds": ROUNDS,
              "memory_probes": MEMORY_PROBES,
              "cpu": platform.processor() or platform.machine(), "preset": PRESET,
              "gflops_per_image": {k: v / 1e9 for k, v in flops.items()},
              "params_millions": {k: v / 1e6 for k, v in params.items()}, "ceiling": ceiling(args.repeats, bf16),
              "cpu_has_bf16": bf16, "malloc": malloc}
    print(json.dumps({k: report[k] for k in ("gflops_per_image", "params_millions", "ceiling")}), flush=True)

    # Libraries alternate within each measurement, and every figure is the best of ROUNDS rounds minutes
    # apart: this machine's speed drifts by 10-15% over minutes, which one round would read as a ratio.
    results = {name: {} for name in names}
    best = lambda name, key, value: results[name].__setitem__(key, max(results[name].get(key, 0.0), value))
    for _ in range(ROUNDS):
        for batch in BATCHES:
            for name in names:
                s = best_seconds(as_run(name, forward_fn(models[name], batch)), args.repeats)
                best(name, f"forward_b{batch}", batch / s)
        for name in names:
            best(name, "train_b32", TRAIN_BATCH / best_seconds(as_run(name, train_fn(build(name), TRAIN_BATCH)),
                                                               args.repeats))
            models[name].eval()
            for n in SAMPLE_SIZES:
                run = as_run(name, sample_fn(name, models[name], n))
                best(name, f"sample_{n}x{SAMPLE_STEPS}", n / best_seconds(run, max(2, args.repeats // 2), warmup=1))
            print(name, json.dumps(results[name]), flush=True)

    compiled = speed_up(build("noisecraft-compile"), "fp32", compile=True)
    t0 = time.perf_counter()
    forward_fn(compiled, 16)()
    compile_seconds = time.perf_counter() - t0
    results["noisecraft-compile"] = {"forward_b16": 16 / best_seconds(forward_fn(compiled, 16), args.repeats),
                                     "compile_seconds": compile_seconds}

    for name in names:
        for mode in ("forward", "train"):
            rss, tensors = zip(*(peak_memory_mb(name, mode) for _ in range(MEMORY_PROBES)))
            rss, tensors = sorted(rss), sorted(tensors)
            results[name][f"peak_memory_mb_{mode}"] = rss[len(rss) // 2]
            results[name][f"peak_memory_mb_{mode}_range"] = [rss[0], rss[-1]]
            results[name][f"peak_tensor_mb_{mode}"] = tensors[len(tensors) // 2]
            results[name][f"peak_tensor_mb_{mode}_range"] = [tensors[0], tensors[-1]]
            if name in FIXED_NAMES:
                fixed = sorted(peak_memory_mb(name, mode, FIXED_MMAP)[0] for _ in range(FIXED_PROBES))
                results[name][f"peak_memory_mb_{mode}_fixed_mmap"] = fixed[len(fixed) // 2]
                results[name][f"peak_memory_mb_{mode}_fixed_mmap_range"] = [fixed[0], fixed[-1]]

    flop_of = lambda name: flops["diffusers" if name.startswith("diffusers") else "noisecraft"]
    for name, r in results.items():
        ceil = report["ceiling"]["bf16" if name.endswith("bf16") else "fp32"]["ceiling_gflops"]
        for key in [k for k in r if k.startswith("forward")]:
            r[key.replace("forward", "gflops_forward")] = r[key] * flop_of(name) / 1e9
            r[key.replace("forward", "ceiling_share_forward")] = r[key] * flop_of(name) / 1e9 / ceil
        if "train_b32" in r:                            # backward costs about twice the forward
            r["gflops_train"] = 3 * r["train_b32"] * flop_of(name) / 1e9
    report["results"] = results
    # Throughput at matched FLOPs: images/s scaled by FLOPs per image, so a residual FLOP difference
    # between the two networks does not count for or against either.
    work = lambda name, key: results[name][key] * flop_of(name)
    timed = lambda key: not key.startswith(("gflops", "ceiling", "peak"))
    report["ratios"] = {
        f"{mine}/{ref}": {key: work(mine, key) / work(ref, key) for key in results["diffusers"]
                          if key in results[mine] and timed(key)}
        for mine in ("noisecraft", "noisecraft-direct", "noisecraft-bf16") if mine in results
        for ref in ("diffusers", "diffusers-channels_last")}
    report["ratios"]["noisecraft/noisecraft-direct"] = {      # the Winograd lever alone
        key: results["noisecraft"][key] / results["noisecraft-direct"][key] for key in results["diffusers"] if timed(key)}
    if bf16:
        report["ratios"]["noisecraft-bf16/diffusers-bf16"] = {
            key: work("noisecraft-bf16", key) / work("diffusers-bf16", key) for key in results["diffusers"] if timed(key)}
    report["ratios"]["noisecraft-compile/noisecraft forward_b16"] = (results["noisecraft-compile"]["forward_b16"]
                                                                     / results["noisecraft"]["forward_b16"])
    if bf16:                                            # both compare bf16 paths
        report["levers"] = levers(args.repeats)
        report["presets"] = preset_precision(args.repeats)
    if not args.no_quality and bf16:
        report["bf16_quality"] = bf16_quality()
    atomic_write_json(ROOT / "results" / "speed.json", report)
    plot(report, ROOT.parent / "docs" / "images" / "speed.png")
    print(json.dumps(report["ratios"], indent=1))
    if "bf16_quality" in report:
        print(json.dumps(report["bf16_quality"], indent=1))


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"forward_b{b}" for b in BATCHES] + ["train_b32", "sample_64x20", "sample_1x20"]
    labels = ["forward b1", "forward b16", "forward b64", "train b32", "sample 64x20", "sample 1x20"]
    names = [name for name in ("diffusers", "diffusers-channels_last", "noisecraft-direct", "noisecraft",
                               "diffusers-bf16", "noisecraft-bf16") if name in report["results"]]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.13
    for i, name in enumerate(names):
        base = report["results"]["diffusers"]
        ax.bar([k + (i - (len(names) - 1) / 2) * width for k in range(len(keys))],
               [report["results"][name][key] / base[key] for key in keys], width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(keys)), labels)
    ax.set_ylabel("images/s relative to diffusers fp32")
    ax.set_title(f"CPU speed at matched FLOPs ({report['gflops_per_image']['noisecraft']:.2f} GFLOP/image, "
                 f"{report['threads']} threads)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
