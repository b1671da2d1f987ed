"""Checkpoints under faults: keep-last-K, checksums and fallback, a full disk, SIGTERM, leftovers of a
killed writer, and the metrics a run leaves (train_log.jsonl, plot-log, TensorBoard)."""
import errno
import json
import os
import signal
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save as save_tensors

from noisecraft import NoisecraftError
from noisecraft.cli import main
from noisecraft.train import loop
from noisecraft.train.checkpoint import (LEGACY_FILE, deserialize, durable_write, list_checkpoints, load_checkpoint,
                                         serialize)
from noisecraft.train.loop import TrainingInterrupted, TrainOptions, train
from noisecraft.train.metrics import read_log


def opts(tmp_path, name="run", **kw):
    base = dict(data="digits", out=str(tmp_path / name), preset="tiny", batch_size=8, max_steps=8,
                checkpoint_every=2, sample_every=0, seed=0)
    return TrainOptions(**(base | kw))


def run(o, messages=None):
    return train(o, log=(messages.append if messages is not None else lambda m: None), progress=False)


def same_state(a, b):
    """Bit-for-bit equal newest checkpoints (weights, EMA, optimizer, every RNG)."""
    x, y = (load_file(str(list_checkpoints(d)[0])) for d in (a, b))
    return x.keys() == y.keys() and [k for k in x if not torch.equal(x[k], y[k])] == []


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 8-step run every interrupted one is compared with."""
    return run(opts(tmp_path_factory.mktemp("straight")))


def test_keeps_the_last_k_checkpoints_each_with_a_checksum(tmp_path):
    out = run(opts(tmp_path, keep_checkpoints=2))
    assert [p.name for p in list_checkpoints(out)] == ["step-000000008.safetensors", "step-000000006.safetensors"]
    blob = list_checkpoints(out)[0].read_bytes()
    tensors, meta = deserialize(blob)
    assert meta["progress"]["step"] == 8 and "sha256" in blob[:20_000].decode("latin-1")


def test_stopped_at_step_k_and_resumed_equals_the_uninterrupted_run(tmp_path, straight):
    run(opts(tmp_path, max_steps=3))                                   # stops off the checkpoint grid
    out = run(opts(tmp_path, max_steps=8, resume=True))
    assert same_state(out, straight)


def test_sigterm_checkpoints_then_stops_and_the_resume_is_exact(tmp_path, monkeypatch, straight):
    real, calls = loop.diffusion_loss, []

    def loss_with_a_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)                       # arrives in the middle of step 5
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "diffusion_loss", loss_with_a_signal)
    with pytest.raises(TrainingInterrupted) as e:
        run(opts(tmp_path))
    assert e.value.signum == signal.SIGTERM and e.value.step == 5
    assert list_checkpoints(tmp_path / "run")[0].name == "step-000000005.safetensors"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL            # handlers restored
    monkeypatch.setattr(loop, "diffusion_loss", real)
    assert same_state(run(opts(tmp_path, resume=True)), straight)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight):
    out = run(opts(tmp_path, max_steps=6))
    newest, previous = list_checkpoints(out)[:2]
    blob = bytearray(newest.read_bytes())
    blob[-100] ^= 0xFF                                                 # one flipped bit in the optimizer state
    newest.write_bytes(bytes(blob))
    messages = []
    resumed = run(opts(tmp_path, max_steps=8, resume=True), messages)
    assert any("step-000000006.safetensors is corrupt (checksum mismatch); resumed from the older "
               "step-000000004.safetensors" in m for m in messages), messages
    assert (out / "checkpoint" / "step-000000006.safetensors.corrupt").is_file()   # set aside, not deleted
    assert same_state(resumed, straight)


def test_a_truncated_checkpoint_is_passed_over_and_all_corrupt_is_an_error(tmp_path):
    out = run(opts(tmp_path, max_steps=4))
    newest, older = list_checkpoints(out)[:2]
    newest.write_bytes(newest.read_bytes()[:1000])
    assert load_checkpoint(out).path == older
    older.write_bytes(b"")
    with pytest.raises(NoisecraftError, match="no readable checkpoint"):
        load_checkpoint(out)


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch, straight):
    real_fsync, real_loss, calls = os.fsync, loop.diffusion_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        return real_loss(*args, **kwargs)

    def fsync(fd):
        if len(calls) > 4:                                             # after the step-4 checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(loop, "diffusion_loss", loss)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(NoisecraftError, match=r"^disk full \(No space left on device\) while writing the step-6 "
                                              r"checkpoint in .*; the checkpoint of step 4 is intact: free space"):
        run(opts(tmp_path))
    monkeypatch.setattr(os, "fsync", real_fsync)
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["step-000000002.safetensors",
                                                                       "step-000000004.safetensors"]
    assert not list(out.rglob("*.tmp"))                                # no half-written file left
    assert load_checkpoint(out).meta["progress"]["step"] == 4
    assert same_state(run(opts(tmp_path, resume=True)), straight)


def test_a_killed_writer_leaves_only_temp_files_which_a_resume_removes(tmp_path):
    out = run(opts(tmp_path, max_steps=2))
    (out / "checkpoint" / ".step-000000004.safetensors.abc123.tmp").write_bytes(b"half a checkpoint")
    (out / ".model.safetensors.xyz.tmp").write_bytes(b"half the weights")
    assert load_checkpoint(out).meta["progress"]["step"] == 2           # temp files are never candidates
    run(opts(tmp_path, max_steps=3, resume=True))
    assert not list(out.rglob("*.tmp"))


def test_durable_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = durable_write(tmp_path / "f.bin", b"old")

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        durable_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_checkpoint_from_before_checksums_still_resumes(tmp_path, straight):
    out = run(opts(tmp_path, max_steps=4))
    tensors, meta = deserialize(list_checkpoints(out)[0].read_bytes())
    legacy = {k: v for k, v in tensors.items() if not k.startswith("rng.rank0.")}
    legacy["rng.torch"] = tensors["rng.rank0.torch"]                   # the old layout: one torch state, no numpy
    for p in list_checkpoints(out):
        p.unlink()
    (out / "checkpoint" / LEGACY_FILE).write_bytes(save_tensors(legacy, metadata={"noisecraft": json.dumps(meta)}))
    assert load_checkpoint(out).path.name == LEGACY_FILE
    assert same_state(run(opts(tmp_path, resume=True)), straight)


def test_checksum_covers_the_metadata(tmp_path):
    blob = serialize({"x": torch.ones(3)}, {"progress": {"step": 1}})
    assert deserialize(blob)[1]["progress"]["step"] == 1
    forged = blob.replace(b'\\"step\\": 1', b'\\"step\\": 9')
    assert forged != blob
    with pytest.raises(ValueError, match="checksum"):
        deserialize(forged)


def test_log_records_throughput_and_plot_log_draws_it(tmp_path, capsys):
    out = run(opts(tmp_path, max_steps=6, log_every=2))
    records = read_log(out)
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(r["img_s"] > 0 and r["steps_s"] > 0 and r["skipped"] == 0 and r["processes"] == 1 for r in records)
    with pytest.raises(SystemExit) as e:
        main(["plot-log", str(out), "--out", str(tmp_path / "curves.png")])
    assert e.value.code == 0 and (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 records, steps 2..6" in capsys.readouterr().out


def test_read_log_keeps_the_later_records_of_a_resumed_run_and_ignores_a_cut_last_line(tmp_path):
    lines = [{"step": s, "loss": 1.0 / s, "img_s": 10.0} for s in (10, 20, 30, 20, 30, 40)]
    (tmp_path / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 5')
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == [10, 20, 30, 40] and records[1]["loss"] == 1.0 / 20
    (tmp_path / "train_log.jsonl").write_text('not json\n{"step": 1, "loss": 1, "img_s": 1}\n')
    with pytest.raises(NoisecraftError, match="line 1"):
        read_log(tmp_path)


def test_plot_log_without_a_log_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plot-log", str(tmp_path)])
    assert e.value.code == 2 and "train_log.jsonl does not exist" in capsys.readouterr().err


def test_tensorboard_needs_its_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # makes the import fail
    with pytest.raises(NoisecraftError, match="--tensorboard needs the tensorboard package: pip install tensorboard"):
        run(opts(tmp_path, tensorboard=True))


def test_tensorboard_gets_the_logged_scalars(tmp_path, monkeypatch):
    scalars = []

    class Writer:
        def __init__(self, path):
            self.path = path

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            scalars.append(("closed", self.path))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    out = run(opts(tmp_path, max_steps=4, log_every=2, tensorboard=True))
    assert ("train/loss", 2) in scalars and ("train/img_s", 4) in scalars
    assert scalars[-1] == ("closed", str(out / "tensorboard"))
