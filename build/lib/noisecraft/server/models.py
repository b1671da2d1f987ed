"""The models a server serves: named, loaded once in the background (the health route says 200 only after),
and described for /v1/models. Requests name models from this set only; a request never makes the server read
a path of its choosing."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from torch import nn

from noisecraft.errors import NoisecraftError
from noisecraft.models import load_diffusion_model, resolve_model_dir

log = logging.getLogger("noisecraft.server")


class UnknownModel(NoisecraftError):
    """A request named a model this server does not serve."""


class ModelsLoading(NoisecraftError):
    """A request came before the models were loaded."""


@dataclass
class Served:
    name: str
    model: nn.Module

    @property
    def config(self):
        return self.model.config

    def describe(self) -> dict:
        c = self.config
        names = c.class_names or ([str(i) for i in range(c.unet.num_classes)] if c.unet.num_classes else None)
        return {"name": self.name, "description": c.description, "image_size": c.image_shape[1],
                "channels": c.image_shape[0], "latent": c.vae is not None, "cond": c.cond, "classes": names,
                "guidance": c.guidance, "prediction": self.model.prediction, "schedule": c.schedule.kind,
                "num_timesteps": self.model.schedule.num_timesteps,
                "upscale_factor": getattr(c, "sr_factor", 0) or None}


def model_name(spec: str | Path) -> str:
    """A shipped model by its name, a folder by its own name."""
    path = Path(spec)
    return path.resolve().name if path.is_dir() else str(spec)


class ModelStore:
    """`specs` is a shipped name or folder, a list of them (the first is the default), or {name: model or spec}."""

    def __init__(self, specs: str | Path | Sequence[str | Path] | Mapping[str, nn.Module | str | Path],
                 device: str = "cpu"):
        if isinstance(specs, (str, Path)):
            specs = [specs]
        if not isinstance(specs, Mapping):
            named = {}
            for spec in specs:
                resolve_model_dir(spec)                   # a wrong name fails now, not in the background
                name = model_name(spec)
                if name in named:
                    raise NoisecraftError(f"two models are named {name!r}: serve folders with different names")
                named[name] = spec
            specs = named
        if not specs:
            raise NoisecraftError("give at least one model to serve")
        self.specs, self.device = dict(specs), device
        self.default = next(iter(self.specs))
        self._models: dict[str, Served] = {}
        self.error: str | None = None
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self) -> None:
        """Load every model (in the caller's thread); a failure is kept in `error` for the health route."""
        try:
            for name, spec in self.specs.items():
                model = spec if isinstance(spec, nn.Module) else \
                    load_diffusion_model(spec, device=self.device, purpose="serving")
                if getattr(model.config, "cond", "none") == "text":
                    model.text_encoder()              # load the encoder now: health 200 means ready to answer
                self._models[name] = Served(name, model.eval())
                log.info("model %s loaded", name)
            self._ready.set()
        except NoisecraftError as e:
            self.error = str(e)
            log.error("could not load the models: %s", e)

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="noisecraft-model-loader", daemon=True)
        thread.start()
        return thread

    def get(self, name: str | None = None) -> Served:
        if not self.ready:
            raise ModelsLoading(self.error or "the models are still loading: retry when the health route answers 200")
        name = name or self.default
        if name not in self._models:
            raise UnknownModel(f"unknown model {name!r}: this server serves {', '.join(self._models)} "
                               "(GET /v1/models lists them)")
        return self._models[name]

    def served(self) -> list[Served]:
        return list(self._models.values())
