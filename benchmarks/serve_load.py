"""Load test of `noisecraft serve` on loopback: N requests from C concurrent clients to /v1/generate.

Starts the real server (`python -m noisecraft serve`) in a subprocess on a free 127.0.0.1 port, waits for its
health route, fires the requests (each a different seed), and checks that every request got an answer
(none lost), that none was a 5xx, and that each answer holds one image. Reports p50/p95 latency and
throughput, and, measured in the same run, the time the library itself takes for the same image
(noisecraft.sample in this process), so the server's overhead reads as a ratio.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py            # 200 requests, 16 clients
Writes benchmarks/results/serve_load.json. Traffic goes to 127.0.0.1 only, and the run is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited early:\n{proc.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not become healthy in time")


def one_request(url: str, body: dict, timeout: float) -> tuple[int, float, str]:
    """(status, seconds, error or ""); status 0 when no HTTP answer came back at all."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/v1/generate", data, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            images = json.load(r)["images"]
            return r.status, time.perf_counter() - start, "" if len(images) == 1 else f"{len(images)} images"
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - start, e.read().decode(errors="replace")[:200]
    except OSError as e:
        return 0, time.perf_counter() - start, str(e)


def run_load(url: str, requests: int, clients: int, steps: int, sampler: str, timeout: float) -> dict:
    results: list[tuple[int, float, str] | None] = [None] * requests
    next_index, lock = 0, threading.Lock()

    def client():
        nonlocal next_index
        while True:
            with lock:
                i, next_index = next_index, next_index + 1
            if i >= requests:
                return
            results[i] = one_request(url, {"steps": steps, "sampler": sampler, "seed": i}, timeout)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    answered = [r for r in results if r is not None and r[0] != 0]
    ok = [r for r in answered if r[0] == 200 and not r[2]]
    latencies = sorted(r[1] for r in ok)
    q = lambda p: latencies[min(len(latencies) - 1, int(round(p * (len(latencies) - 1))))] if latencies else None
    codes: dict[str, int] = {}
    for r in results:
        key = str(r[0]) if r is not None else "none"
        codes[key] = codes.get(key, 0) + 1
    return {"requests": requests, "clients": clients, "answered": len(answered), "ok": len(ok),
            "lost": requests - len(answered), "status_5xx": sum(1 for r in answered if r[0] >= 500),
            "status_codes": codes, "errors": sorted({r[2] for r in results if r and r[2]})[:5],
            "wall_s": wall, "throughput_rps": len(ok) / wall, "p50_s": q(0.50), "p95_s": q(0.95),
            "max_s": latencies[-1] if latencies else None, "mean_s": statistics.fmean(latencies) if latencies else None}


def library_time(model: str, steps: int, sampler: str, repeats: int = 20) -> float:
    """Median seconds noisecraft.sample takes for one image in this process (after a warm-up)."""
    import torch

    from noisecraft import load_model, sample

    net = load_model(model)
    shape = (1, *net.config.image_shape)
    run = lambda seed: sample(net, shape, sampler=sampler, steps=steps, generator=[torch.Generator().manual_seed(seed)])
    run(0)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        run(seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300, help="per-request limit, server and client")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()

    import torch

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "noisecraft", "serve", "--model", args.model, "--port", str(port),
           "--workers", str(args.workers), "--queue-size", str(max(32, args.clients)), "--timeout", str(args.timeout)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        startup = wait_healthy(url, proc)
        load = run_load(url, args.requests, args.clients, args.steps, args.sampler, args.timeout)
    finally:
        proc.terminate()
        proc.wait(30)
    direct = library_time(args.model, args.steps, args.sampler)
    per_image = load["wall_s"] / max(1, load["ok"])
    result = {
        "benchmark": "serve_load", "model": args.model, "sampler": args.sampler, "steps": args.steps,
        "server": {"workers": args.workers, "queue_size": max(32, args.clients), "ui": True},
        "startup_to_healthy_s": startup, **load,
        "library_s_per_image": direct, "server_s_per_image": per_image,
        "server_over_library": per_image / direct,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu": platform.processor() or
                        platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{load['ok']}/{args.requests} ok, {load['lost']} lost, {load['status_5xx']} 5xx; "
          f"p50 {load['p50_s'] * 1000:.0f} ms, p95 {load['p95_s'] * 1000:.0f} ms, "
          f"{load['throughput_rps']:.1f} requests/s; {per_image * 1000:.1f} ms per image served vs "
          f"{direct * 1000:.1f} ms in the library ({result['server_over_library']:.2f}x); written to {args.out}")
    if load["lost"] or load["status_5xx"] or load["ok"] != args.requests:
        raise SystemExit(f"failed: {load['status_codes']} {load['errors']}")


if __name__ == "__main__":
    main()
