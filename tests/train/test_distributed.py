"""Data-parallel training: W processes with gloo train the same weights as one process with the
same global batch, and a run may change its number of processes (or --grad-accum) across a resume."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from noisecraft.train.checkpoint import list_checkpoints
from noisecraft.train.distributed import micro_slices, rank_slice, torchrun_command
from noisecraft.train.loop import TrainOptions, train

TOL = 1e-5


def opts(tmp_path, name, **kw):
    base = dict(data="digits", out=str(tmp_path / name), preset="tiny", batch_size=16, max_steps=4,
                checkpoint_every=4, sample_every=0, seed=0)
    return TrainOptions(**(base | kw))


def weights(out):
    state = load_file(str(list_checkpoints(out)[0]))
    return {k: v for k, v in state.items() if k.startswith(("model.", "ema.", "optim."))}


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("n, world, accum", [(16, 2, 1), (17, 3, 2), (8, 1, 8), (5, 2, 2)])
def test_rank_and_micro_slices_cover_the_global_batch_once(n, world, accum):
    rows = [i for r in range(world) for part in micro_slices(rank_slice(n, world, r), accum)
            for i in range(n)[part]]
    assert rows == list(range(n))


def test_two_gloo_processes_train_the_same_weights_as_one(tmp_path):
    """`noisecraft train --nproc 2` (torchrun, gloo) against one process, same global batch of 16; then
    the 2-process checkpoint resumed by one process with --grad-accum 2 against a straight 8-step run."""
    cmd = [sys.executable, "-m", "noisecraft", "train", "--nproc", "2", "--device", "cpu", "--quiet",
           "--out", str(tmp_path / "two"), "--batch-size", "16", "--max-steps", "4", "--checkpoint-every", "4",
           "--sample-every", "0"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("model written to") == 1                      # rank 0 alone reports
    one = train(opts(tmp_path, "one"), log=lambda m: None, progress=False)
    diff = max_difference(weights(tmp_path / "two"), weights(one))
    print(f"2 processes vs 1 after 4 steps: max |weight difference| = {diff:.3g}")
    assert diff < TOL
    rng = load_file(str(list_checkpoints(tmp_path / "two")[0]))
    assert {"rng.rank0.torch", "rng.rank1.torch", "rng.noise"} <= rng.keys()
    assert not torch.equal(rng["rng.rank0.torch"], rng["rng.rank1.torch"])   # each process its own stream

    resumed = train(opts(tmp_path, "two", max_steps=8, resume=True, grad_accum=2), log=lambda m: None, progress=False)
    straight = train(opts(tmp_path, "straight", max_steps=8), log=lambda m: None, progress=False)
    diff = max_difference(weights(resumed), weights(straight))
    print(f"2 processes then 1 with --grad-accum 2 vs 1 straight after 8 steps: {diff:.3g}")
    assert diff < TOL


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    big = train(opts(tmp_path, "big", max_steps=6), log=lambda m: None, progress=False)
    accumulated = train(opts(tmp_path, "acc", max_steps=6, grad_accum=3), log=lambda m: None, progress=False)
    assert max_difference(weights(big), weights(accumulated)) < TOL


def test_torchrun_command_runs_this_module():
    cmd = torchrun_command(4, ["--out", "o"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in cmd and cmd[-5:] == ["-m", "noisecraft", "train", "--out", "o"]


def test_a_batch_smaller_than_the_micro_batches_is_refused(tmp_path):
    from noisecraft import NoisecraftError
    with pytest.raises(NoisecraftError, match="every micro-batch needs an image"):
        train(opts(tmp_path, "x", batch_size=2, grad_accum=4), log=lambda m: None, progress=False)
