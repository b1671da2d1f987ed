"""Model directories (config.json + model.safetensors) and the model protocol around a UNet."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as save_tensors
from torch import nn

from noisecraft.baselines.vae import VAE, VAEConfig
from noisecraft.device import autocast, cast_once, running_net
from noisecraft.diffusion import NoiseSchedule, ScheduleConfig, check_prediction
from noisecraft.errors import NoisecraftError
from noisecraft.io import atomic_write_bytes, atomic_write_json
from noisecraft.samplers.tuning import read_coefficients, read_grids
from noisecraft.nets import UNet, UNetConfig
from noisecraft.version import __version__

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
VAE_WEIGHTS_FILE = "vae.safetensors"     # a latent diffusion model's autoencoder, beside its UNet


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and use it: what config.json holds."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: str = "epsilon"
    family: str = "diffusion"
    cond: str = "none"                       # "none" | "class" | "text" | "superres"
    sr_factor: int = 0                       # cond "superres": the model upsamples (H/f, W/f) images f times
    data: str = ""                           # the source it was trained on
    class_names: list[str] | None = None
    guidance: float = 1.0                    # default classifier-free guidance scale for sampling
    text_encoder: str | None = None          # cond "text": "minilm" or a local encoder folder (nets/text.py)
    max_tokens: int = 24                     # prompt length the text encoder pads or truncates to
    vae: VAEConfig | None = None             # latent diffusion: the UNet denoises this VAE's latents (vae.safetensors)
    latent_scale: float = 1.0                # the UNet's data are z * latent_scale, z the posterior mean
    description: str = ""
    noisecraft_version: str = __version__

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One generated image: the UNet's input, or for a latent diffusion model the VAE's images."""
        return self.vae.image_shape if self.vae is not None else self.unet_shape

    @property
    def unet_shape(self) -> tuple[int, int, int]:
        """One input of the UNet: an image, or for a latent diffusion model a (scaled) latent."""
        return (self.unet.in_channels, self.unet.image_size, self.unet.image_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        try:
            unet = UNetConfig.from_dict(d.pop("unet"))
            schedule = ScheduleConfig(**d.pop("schedule"))
            vae = d.pop("vae", None)
            config = cls(unet=unet, schedule=schedule, vae=VAEConfig.from_dict(vae) if vae is not None else None, **d)
        except (KeyError, TypeError) as e:
            raise NoisecraftError(f"config.json is not a noisecraft model config ({e})") from None
        check_prediction(config.prediction)
        return config


class DiffusionModel(nn.Module):
    """The model protocol of DESIGN.md §2: model(x_t, t, **cond) -> prediction, plus the
    schedule and parameterization it was trained with."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.net = UNet(config.unet)
        self.vae = VAE(config.vae).requires_grad_(False) if config.vae is not None else None    # frozen
        self.schedule = NoiseSchedule.from_config(config.schedule)
        self.prediction = config.prediction
        self.precision = "fp32"          # or "bf16" autocast: noisecraft.device.speed_up
        self.grids: dict = {}            # timestep grids tuned for this model: {sampler: {steps: [t, ...]}}
        self.coefficients: dict = {}     # the learned sampler's, per grid: {sampler: {steps: [[c, ...], ...]}}
        self._text_encoder = None
        self.cast_net = None             # the bf16 copy of net inside cast_once()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        with autocast(x_t.device, self.precision):
            return running_net(self, self.net)(x_t, t, **cond).float()

    def cast_once(self):
        """A context for a sampling loop: in bf16, the network's weights are cast once, not at every call."""
        return cast_once(self, self.net)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """A latent diffusion model's data for `images` (B, *image_shape) in [-1, 1]: the VAE's posterior mean
        times latent_scale, (B, *unet_shape). Scaling the latents to unit variance lets the UNet and schedule
        of pixel diffusion work unchanged (Rombach et al. 2022, Appendix G; Stable Diffusion's scaling_factor)."""
        if self.vae is None:
            raise NoisecraftError("this model denoises pixels: it has no VAE to encode with")
        if tuple(images.shape[1:]) != self.config.image_shape:
            raise NoisecraftError(f"this latent diffusion model encodes {self.config.image_shape} images, "
                                  f"got {tuple(images.shape[1:])}")
        with torch.no_grad():
            return self.vae.encode(images.to(self.vae.log_scale))[0] * self.config.latent_scale   # (B, c, h, w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, *image_shape) in [-1, 1] for a latent diffusion model's data z (B, *unet_shape): the
        mean of the VAE's p(x | z / latent_scale), clipped."""
        if self.vae is None:
            raise NoisecraftError("this model denoises pixels: it has no VAE to decode with")
        with torch.no_grad():
            return self.vae.decode(z.to(self.vae.log_scale) / self.config.latent_scale).clamp(-1, 1)

    def text_encoder(self):
        """The frozen text encoder of a text-conditional model, loaded on first use."""
        if self.config.cond != "text":
            raise NoisecraftError("this model is not text-conditional: it takes no free-text prompt")
        if self._text_encoder is None:
            from noisecraft.nets.text import TextEncoder
            self._text_encoder = TextEncoder(self.config.text_encoder, self.config.max_tokens)
        return self._text_encoder

    def null_cond(self, cond: dict) -> dict:
        """The "no condition" input for classifier-free guidance, batched like `cond`: the null class,
        or the empty prompt's token states (what condition dropout trained on)."""
        if "class_labels" in cond and self.config.unet.num_classes:
            return {"class_labels": torch.full_like(cond["class_labels"], self.config.unet.num_classes)}
        if "context" in cond and self.config.cond == "text":
            states, mask, _ = self.text_encoder().encode([""])
            n = cond["context"].shape[0]
            return {"context": states.to(cond["context"]).expand(n, -1, -1),
                    "context_mask": mask.to(cond["context"].device).expand(n, -1)}
        raise NoisecraftError("this model was not trained with a droppable condition: set guidance to 1")


def models_root() -> Path:
    """Where shipped models live: $NOISECRAFT_MODELS, else the repository's models/ folder."""
    return Path(os.environ.get("NOISECRAFT_MODELS", Path(__file__).resolve().parent.parent / "models"))


def list_models() -> list[tuple[str, str]]:
    """(name, description) of each shipped model."""
    root = models_root()
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if (d / CONFIG_FILE).is_file():
            out.append((d.name, json.loads((d / CONFIG_FILE).read_text()).get("description", "")))
    return out


def resolve_model_dir(name_or_dir: str | Path) -> Path:
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    shipped = models_root() / str(name_or_dir)
    if "/" not in str(name_or_dir) and (shipped / CONFIG_FILE).is_file():
        return shipped
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(name_or_dir)):
        raise NoisecraftError(f"unknown model {str(name_or_dir)!r}: no such folder, and a Hugging Face Hub name is not "
                              f"downloaded: fetch it first (huggingface-cli download {name_or_dir} --local-dir DIR) "
                              "and load DIR")
    names = ", ".join(n for n, _ in list_models()) or "none"
    raise NoisecraftError(f"unknown model {str(name_or_dir)!r}: use a shipped name ({names}) or a model directory")


def read_config_json(model_dir: Path) -> dict:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise NoisecraftError(f"{model_dir} is not a model directory: {CONFIG_FILE} is missing")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NoisecraftError(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(raw, dict):
        raise NoisecraftError(f"{path} is not a noisecraft model config (not a JSON object)")
    return raw


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict with a clear error when the file does not fit the architecture."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the file but {tuple(own[wrong[0]].shape)} in the config"
                  if wrong else f"missing {missing[:2]}, unexpected {unexpected[:2]}")
        raise NoisecraftError(f"{source} does not match its config.json ({detail}): the weights and config belong to different models")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise NoisecraftError(f"{path} is missing: the model directory is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise NoisecraftError(f"{path} is not a readable safetensors file ({e}): re-train or re-copy the model") from None


def load_model(name_or_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A shipped model by name (see `list_models()`), a model directory (a DiffusionModel; for the VAE, GAN
    and autoregressive families their sampling module, noisecraft/baselines/, whose `model_config` is the
    directory's BaselineConfig), or a local diffusers folder (a DiffusersUNet, noisecraft/interop.py), in eval mode."""
    from noisecraft.interop import diffusers_kind, load_diffusers

    model_dir = resolve_model_dir(name_or_dir)
    if diffusers_kind(model_dir):
        return load_diffusers(model_dir).to(device)
    if not (model_dir / CONFIG_FILE).is_file():
        entries = sorted(p.name + "/" * p.is_dir() for p in model_dir.iterdir())
        found = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "") or "nothing"
        raise NoisecraftError(f"{model_dir} is not a model directory: {CONFIG_FILE} is missing, and it is no diffusers "
                              f"folder either (model_index.json with unet/ and scheduler/, or a UNet2DModel config.json); "
                              f"found {found}")
    raw = read_config_json(model_dir)
    if raw.get("family", "diffusion") != "diffusion":
        from noisecraft.baselines import load_baseline
        return load_baseline(model_dir, raw).to(device)
    config = ModelConfig.from_dict(raw)
    model = DiffusionModel(config)
    load_state(model.net, read_weights(model_dir / WEIGHTS_FILE), model_dir / WEIGHTS_FILE)
    if model.vae is not None:
        load_state(model.vae, read_weights(model_dir / VAE_WEIGHTS_FILE), model_dir / VAE_WEIGHTS_FILE)
    model.grids, model.coefficients = read_grids(model_dir), read_coefficients(model_dir)
    return model.to(device).eval()


def load_diffusion_model(name_or_dir: str | Path, device: str | torch.device = "cpu", purpose: str = "this",
                         pixel_space: bool = False) -> nn.Module:
    """load_model for the uses only a diffusion model serves (guided sampling, upscaling, editing, inpainting,
    tuning, export, serving): a VAE, GAN or autoregressive model is a clear error instead of a failure later;
    with `pixel_space`, so is a latent diffusion model (check_pixel_space)."""
    model = load_model(name_or_dir, device)
    family = getattr(getattr(model, "model_config", None), "family", None)
    if family is not None:
        raise NoisecraftError(f"{name_or_dir} is a {family} model: {purpose} needs a diffusion model "
                              "(one trained with --model diffusion, a shipped diffusion model or a diffusers folder)")
    if pixel_space:
        check_pixel_space(model, purpose)
    return model


def check_pixel_space(model, purpose: str) -> None:
    """Refuse a latent diffusion model for work defined on the pixels of x_t (inpainting masks, upscaling's
    low-resolution constraint), or not carried over to latents yet (grid tuning, export): its x_t are VAE latents."""
    if getattr(model, "vae", None) is not None:
        raise NoisecraftError(f"{purpose} needs a pixel-space diffusion model, and this is a latent diffusion model "
                              "(its x_t are VAE latents): use a model trained without --latent")


def save_model(model_dir: str | Path, config: ModelConfig, net_state: dict[str, torch.Tensor],
               dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json and model.safetensors, each atomically; weights first, so a config
    never points at weights that are not there yet (a latent model's vae.safetensors: save_vae)."""
    model_dir = Path(model_dir)
    save_weights(model_dir / WEIGHTS_FILE, net_state, dtype)
    atomic_write_json(model_dir / CONFIG_FILE, config.to_dict())
    return model_dir


def save_vae(model_dir: str | Path, vae: nn.Module) -> Path:
    """A latent diffusion model's own copy of its VAE's weights, so the directory works wherever it is moved."""
    return save_weights(Path(model_dir) / VAE_WEIGHTS_FILE, vae.state_dict())


def save_weights(path: Path, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Path:
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save_tensors(tensors, metadata={"format": "pt"}))
    return path
