"""Training state for exact resume, one safetensors file per checkpoint in `checkpoint/`:
tensors (raw weights, EMA, optimizer moments, RNG states of every process) plus JSON metadata
(step, data position, LR schedule, optimizer hyper-parameters, options) and a sha256 of both.
No pickle anywhere. The last K checkpoints are kept; a corrupt one is passed over for the one before."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors, save as save_tensors

from noisecraft.errors import NoisecraftError

CHECKPOINT_DIR = "checkpoint"
LEGACY_FILE = "state.safetensors"        # one file, no checksum: what noisecraft wrote before keep-last-K
STEP_FILE = re.compile(r"step-(\d+)\.safetensors")
# Seconds to pause halfway through writing a checkpoint file, so fault-injection tests can kill
# the process at a known point inside the write. Unset in normal use.
FAULT_DELAY_ENV = "NOISECRAFT_FAULT_WRITE_DELAY"


def checkpoint_file(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINT_DIR / f"step-{step:09d}.safetensors"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint files, newest (highest step) first; a legacy state.safetensors last."""
    folder = out_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    steps = sorted(((int(m[1]), p) for p in folder.iterdir() if (m := STEP_FILE.fullmatch(p.name))), reverse=True)
    legacy = [folder / LEGACY_FILE] if (folder / LEGACY_FILE).is_file() else []
    return [p for _, p in steps] + legacy


def clean_partial_writes(out_dir: Path) -> int:
    """Remove temp files a killed writer left (`.NAME.XXXX.tmp`, never renamed into place)."""
    removed = 0
    for folder in (out_dir, out_dir / CHECKPOINT_DIR):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"optim.{pid}.{name}": v for pid, s in sd["state"].items() for name, v in s.items()}
    return tensors, {"param_groups": sd["param_groups"], "state_ids": list(sd["state"])}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): {} for pid in meta["state_ids"]}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state[int(pid)][name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's global RNGs (torch, CUDA, numpy, python) as fixed-shape tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.concatenate([keys.astype(np.int64), [pos, has_gauss]])),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "python": torch.tensor([version, *words], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss_next is not None, gauss_next or 0.0], dtype=torch.float64),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if "numpy" in state:
        words = state["numpy"].numpy()
        np.random.set_state(("MT19937", words[:-2].astype(np.uint32), int(words[-2]), int(words[-1]),
                             float(state["numpy_gauss"][0])))
    if "python" in state:
        version, *words = state["python"].tolist()
        has_gauss, gauss = state["python_gauss"].tolist()
        random.setstate((version, tuple(words), gauss if has_gauss else None))


def _data_section(blob: bytes) -> memoryview:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes."""
    n = int.from_bytes(blob[:8], "little")
    return memoryview(blob)[8 + n:]


def serialize(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    """safetensors bytes whose metadata carries the sha256 of the tensor bytes and of the JSON."""
    meta_json = json.dumps(meta)
    tensors = {k: v.contiguous() for k, v in tensors.items()}       # channels_last weights are stored as NCHW
    plain = save_tensors(tensors, metadata={"noisecraft": meta_json})
    digest = hashlib.sha256(_data_section(plain))
    digest.update(meta_json.encode())
    return save_tensors(tensors, metadata={"noisecraft": meta_json, "sha256": digest.hexdigest()})


def deserialize(blob: bytes, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata; ValueError when the bytes are not a whole, unchanged checkpoint."""
    if len(blob) < 8:
        raise ValueError("file is truncated")
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8:8 + n])
        meta_json = header["__metadata__"]["noisecraft"]
        expected = header["__metadata__"].get("sha256")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError("header is not a noisecraft checkpoint's") from None
    if verify:
        if expected is None:
            raise ValueError("no checksum")
        digest = hashlib.sha256(_data_section(blob))
        digest.update(meta_json.encode())
        if digest.hexdigest() != expected:
            raise ValueError("checksum mismatch")
    try:
        return load_tensors(blob), json.loads(meta_json)
    except (SafetensorError, json.JSONDecodeError) as e:
        raise ValueError(str(e)) from None


def durable_write(path: Path, data: bytes) -> Path:
    """Temp file in the same folder, fsync, atomic rename, then fsync of the folder so the rename
    itself survives a power cut (io.atomic_write_bytes stops before that last step)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if delay := float(os.environ.get(FAULT_DELAY_ENV) or 0):
                f.flush()
                time.sleep(delay)
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def save_checkpoint(out_dir: Path, *, model, ema, optimizer, lr_scheduler, rng: dict[str, torch.Tensor],
                    progress: dict, options: dict, keep: int) -> Path:
    """Write the checkpoint for progress["step"], then delete all but the newest `keep`.
    rng: shared generators by name ("noise") and per-process states as "rank{r}.{name}"."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    tensors |= optim_tensors
    tensors |= {f"rng.{k}": v for k, v in rng.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"progress": progress, "optimizer": optim_meta, "lr_scheduler": lr_scheduler.state_dict(), "options": options}
    path = durable_write(checkpoint_file(out_dir, progress["step"]), serialize(tensors, meta))
    for old in [p for p in list_checkpoints(out_dir) if p != path][keep - 1:]:
        old.unlink(missing_ok=True)
    return path


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, dict[str, torch.Tensor]]      # "model", "ema", "optim", "rng"
    meta: dict
    corrupt: list[tuple[Path, str]] = field(default_factory=list)   # newer files passed over, and why


def load_checkpoint(out_dir: Path) -> Checkpoint:
    """The newest checkpoint that reads back whole and matches its checksum."""
    candidates = list_checkpoints(out_dir)
    if not candidates:
        raise NoisecraftError(f"nothing to resume: {out_dir / CHECKPOINT_DIR} holds no checkpoint "
                              "(drop --resume to start a new run)")
    corrupt = []
    for path in candidates:
        try:
            flat, meta = deserialize(path.read_bytes(), verify=path.name != LEGACY_FILE)
            meta["optimizer_state"] = _unflatten_optimizer({k: v for k, v in flat.items() if k.startswith("optim.")},
                                                           meta["optimizer"])
        except (ValueError, OSError, KeyError) as e:
            corrupt.append((path, str(e) or type(e).__name__))
            continue
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "rng": {}}
        for key, v in flat.items():
            group, name = key.split(".", 1)
            if group in groups:
                groups[group][name] = v
        return Checkpoint(path, groups, meta, corrupt)
    raise NoisecraftError(f"no readable checkpoint in {out_dir / CHECKPOINT_DIR} ({len(corrupt)} corrupt, newest: "
                          f"{corrupt[0][1]}): start a new run in another --out")
