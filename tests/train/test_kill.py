"""Crash safety from the outside: `noisecraft train` processes killed with SIGKILL at random moments
(and, through the fault-injection delay, halfway through writing a checkpoint file) always leave a
newest checkpoint that loads, and the next start resumes from it. SIGTERM/SIGINT exit 143/130 after
writing a checkpoint."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from noisecraft import load_model
from noisecraft.train.checkpoint import FAULT_DELAY_ENV, list_checkpoints, load_checkpoint

RANDOM_KILLS, MID_WRITE_KILLS = 14, 6


ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small PNGs: a folder loads without scikit-learn, and every restart pays its imports."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def command(out, data, resume, max_steps=100_000):
    """Tiny preset, batch 8, a checkpoint after every step: kills often land inside writes."""
    return [sys.executable, "-m", "noisecraft", "train", "--out", str(out), "--data", str(data), "--device", "cpu", "--quiet",
            "--batch-size", "8", "--max-steps", str(max_steps), "--checkpoint-every", "1", "--keep-checkpoints", "2",
            "--sample-every", "0", "--log-every", "1"] + (["--resume"] if resume else [])


def start(out, data, resume, **env):
    return subprocess.Popen(command(out, data, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | ENV | env)


def newest_step(out):
    found = list_checkpoints(out)
    return int(re.search(r"\d+", found[0].name)[0]) if found else -1


def wait_for(condition, child, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"training exited with {child.returncode} while waiting for {what}: {child.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.01)


def partial_writes(out, checkpoints_only=True):
    """Temp files of writes in progress: checkpoint files, or any file of the run."""
    return list((out / "checkpoint").glob(".step-*.tmp")) if checkpoints_only else list(out.rglob(".*.tmp"))


def test_kill_9_at_random_moments_and_mid_write_never_loses_the_checkpoint(tmp_path, images):
    out, rng = tmp_path / "run", random.Random(0)
    plan = ["random"] * RANDOM_KILLS + ["mid-write"] * MID_WRITE_KILLS
    rng.shuffle(plan)
    last, landed_in_write, t0 = -1, 0, time.monotonic()
    for kind in plan:
        child = start(out, images, resume=last >= 0, **({FAULT_DELAY_ENV: "0.5"} if kind == "mid-write" else {}))
        if kind == "mid-write":
            wait_for(lambda: newest_step(out) > last and partial_writes(out), child, "half-written checkpoint")
        else:
            wait_for(lambda: newest_step(out) > last, child, "new checkpoint")
            time.sleep(rng.uniform(0, 0.5))
        in_write = bool(partial_writes(out, checkpoints_only=False))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        landed_in_write += in_write
        if kind == "mid-write":
            assert in_write
        if last >= 0:
            assert f"resuming {out} at step {last}" in child.stderr.read()
        ckpt = load_checkpoint(out)                   # newest readable, checksum verified
        step = ckpt.meta["progress"]["step"]
        assert ckpt.path == list_checkpoints(out)[0] and not ckpt.corrupt      # the newest file itself loads
        assert step > last
        load_model(out)                               # config.json + model.safetensors are whole too
        last = step
    done = subprocess.run(command(out, images, True, max_steps=last + 2), capture_output=True, text=True, timeout=120,
                          env=os.environ | ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {out} at step {last}" in done.stderr and newest_step(out) == last + 2
    assert not list(out.rglob("*.tmp"))
    print(f"{len(plan)} kills ({landed_in_write} seen inside a file write) in {time.monotonic() - t0:.0f} s; "
          f"final step {last + 2}")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_write_a_checkpoint_then_exit_128_plus_the_signal(tmp_path, images, signum, code):
    out = tmp_path / "run"
    child = start(out, images, resume=False)
    wait_for(lambda: newest_step(out) >= 3, child, "third checkpoint")
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    step = newest_step(out)
    assert f"interrupted: {signal.Signals(signum).name} at step {step}: checkpoint written" in err
    assert load_checkpoint(out).meta["progress"]["step"] == step
