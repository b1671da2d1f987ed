"""Training state for exact resume, in one safetensors file written atomically:
tensors (raw weights, EMA, optimizer moments, RNG states) plus JSON metadata (step, data
position, LR schedule, optimizer hyper-parameters). No pickle anywhere."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

from noisecraft.errors import NoisecraftError
from noisecraft.io import atomic_write_bytes

STATE_FILE = "checkpoint/state.safetensors"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"optim.{pid}.{name}": v for pid, s in sd["state"].items() for name, v in s.items()}
    return tensors, {"param_groups": sd["param_groups"], "state_ids": list(sd["state"])}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): {} for pid in meta["state_ids"]}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state[int(pid)][name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(out_dir: Path, *, model, ema, optimizer, lr_scheduler, rng: dict[str, torch.Tensor],
                    progress: dict, options: dict) -> Path:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    tensors |= optim_tensors
    tensors |= {f"rng.{k}": v for k, v in rng.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"progress": progress, "optimizer": optim_meta, "lr_scheduler": lr_scheduler.state_dict(), "options": options}
    data = save_tensors(tensors, metadata={"noisecraft": json.dumps(meta)})
    return atomic_write_bytes(out_dir / STATE_FILE, data)


def load_checkpoint(out_dir: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """-> ({"model": ..., "ema": ..., "optim": ..., "rng": ...} tensors, metadata)."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise NoisecraftError(f"nothing to resume: {path} does not exist (drop --resume to start a new run)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["noisecraft"])
            groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}, "rng": {}}
            for key in f.keys():
                group, name = key.split(".", 1)
                groups[group][name if group != "optim" else key] = f.get_tensor(key)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise NoisecraftError(f"{path} is not a readable noisecraft checkpoint ({e}): start a new run in another --out") from None
    meta["optimizer_state"] = _unflatten_optimizer(groups["optim"], meta["optimizer"])
    return groups, meta
