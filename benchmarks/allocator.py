"""What noisecraft.device.keep_freed_memory() (glibc malloc keeping freed memory) changes, in fresh processes.

The setting is process-wide and cannot be undone within a process, so each reading is its own process:
noisecraft's `small` UNet (fp32, and bf16 autocast) and the diffusers UNet2DModel of benchmarks/speed.py,
each with glibc's default malloc and with keep_freed_memory(), alternating, for several rounds. Per reading:
forward images/s at batch 16 and 64 (the best of 6 calls after 2 warm-up calls; inference_mode), a training step at batch 32 (best
of 3), and per call the median minor page faults and kernel (system) CPU time, the cost that the setting
removes. Page faults are a count, not a time: they do not depend on what else the machine is doing.

    python benchmarks/allocator.py [--rounds 4]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
MODELS = ("noisecraft", "noisecraft-bf16", "diffusers")
SETTINGS = ("default", "kept")


def _usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_minflt


def _per_call(fn, batch: int, calls: int) -> dict:
    fn()
    fn()
    seconds, system, faults = [], [], []
    for _ in range(calls):
        s0, f0 = _usage()
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
        s1, f1 = _usage()
        system.append(s1 - s0)
        faults.append(f1 - f0)
    return {"images_per_s": batch / min(seconds), "system_ms": 1e3 * statistics.median(system),
            "page_faults": statistics.median(faults)}


def probe(name: str, setting: str) -> None:
    """One reading, printed as JSON (run as a child process)."""
    if setting == "kept":
        from noisecraft.device import keep_freed_memory
        if not keep_freed_memory():
            raise SystemExit("keep_freed_memory() does nothing on this C library")
    sys.path.insert(0, str(ROOT))
    import speed
    model = speed.build(name)
    out = {f"forward_b{b}": _per_call(speed.forward_fn(model, b), b, 6) for b in (16, 64)}
    out["train_b32"] = _per_call(speed.train_fn(model, speed.TRAIN_BATCH), speed.TRAIN_BATCH, 3)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if platform.libc_ver()[0] != "glibc":
        raise SystemExit("this benchmark measures glibc's malloc; this machine's C library is not glibc")
    readings = {f"{m}/{s}": [] for m in MODELS for s in SETTINGS}
    for r in range(args.rounds):
        for key in readings:
            child = subprocess.run([sys.executable, __file__, "--probe", key], capture_output=True, text=True,
                                   check=True)
            readings[key].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {key} {readings[key][-1]}", flush=True)
    summary = {}
    for key, rows in readings.items():
        summary[key] = {case: {field: statistics.median(row[case][field] for row in rows)
                               for field in rows[0][case]}
                        for case in rows[0] if case != "peak_rss_mb"}
        summary[key]["peak_rss_mb"] = statistics.median(row["peak_rss_mb"] for row in rows)
    gains = {m: {case: summary[f"{m}/kept"][case]["images_per_s"] / summary[f"{m}/default"][case]["images_per_s"]
                 for case in ("forward_b16", "forward_b64", "train_b32")} for m in MODELS}
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "libc": "-".join(platform.libc_ver()), "rounds": args.rounds,
              "median": summary, "kept_over_default": gains, "readings": readings}
    from noisecraft.io import atomic_write_json
    atomic_write_json(ROOT / "results" / "allocator.json", report)
    print(json.dumps({"median": summary, "kept_over_default": gains}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        probe(*sys.argv[2].split("/"))
    else:
        main()
