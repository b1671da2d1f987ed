"""Interoperability with diffusers, both ways, with nothing downloaded.

In: `load_diffusers(DIR)` runs a local diffusers folder (a saved DDPMPipeline/DDIMPipeline with unet/ and
scheduler/, or a bare UNet2DModel folder) behind noisecraft's model protocol; the noise schedule and the
prediction type come from the scheduler config. diffusers is imported only here, only when such a folder
is loaded.

Out: `export_diffusers(MODEL, OUT)` writes a DDPMPipeline folder. noisecraft's UNet maps exactly onto a
diffusers UNet2DModel built with resnet_time_scale_shift="scale_shift" (adaptive GroupNorm), a
[cos, sin] positional time embedding (flip_sin_to_cos), GroupNorm eps 1e-6 in every block (attention
included), Attn*Block2D at the attention resolutions and a res-attn-res mid block; the weights are only
renamed, and the fused 1x1-conv qkv of our attention is split into diffusers' to_q/to_k/to_v linears.
A class-conditional model maps too (num_class_embeds, its last row the "no class" token); its folder also
gets `pipeline.py` (noisecraft/interop_pipeline.py: class labels and classifier-free guidance, loaded with
`DiffusionPipeline.from_pretrained(DIR, custom_pipeline=DIR, trust_remote_code=True)`) and `noisecraft.json` (class names, the null
class, the default guidance), which bring the names back when noisecraft loads the folder. A model with no
UNet2DModel counterpart (text-conditional, super-resolution, uneven widths) is written as diffusers' custom
components instead: noisecraft/interop_generic.py becomes unet/modeling_noisecraft.py (a `NoisecraftUNet`
ModelMixin running noisecraft's own network) and pipeline.py (prompts, classes, low-res inputs, guidance),
loaded with `custom_pipeline=DIR, trust_remote_code=True` where noisecraft is installed; noisecraft loads such a
folder back without diffusers. Writing any folder needs no diffusers.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save as save_tensors
from torch import nn

from noisecraft.device import autocast, cast_once, running_net
from noisecraft.diffusion import NoiseSchedule, ScheduleConfig, check_prediction
from noisecraft.errors import NoisecraftError
from noisecraft.io import _umask, atomic_write_bytes
from noisecraft.models import ModelConfig, load_diffusion_model, resolve_model_dir
from noisecraft.nets import UNetConfig
from noisecraft.nets.layers import AttentionBlock
from noisecraft.samplers.tuning import read_coefficients, read_grids

PIPELINE_INDEX, UNET_WEIGHTS, SCHEDULER_CONFIG = "model_index.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"
CLASSES_FILE, PIPELINE_FILE = "noisecraft.json", "pipeline.py"   # written beside a class-conditional export
GENERIC_UNET, GENERIC_MODULE = "NoisecraftUNet", "modeling_noisecraft"   # the custom component of other exports
# The config format written by export: the oldest diffusers that noisecraft's tests support (pyproject.toml).
DIFFUSERS_FORMAT = "0.30.0"
# Blocks a UNet2DModel runs from (x_t, t) alone: no cross-attention, no encoder-only blocks.
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2D", None)
# diffusers' DDPMScheduler defaults, used for keys a scheduler config leaves out.
DDPM_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                 "prediction_type": "epsilon"}


# ---------------------------------------------------------------- diffusers folder -> noisecraft model

def diffusers_kind(path: Path) -> str | None:
    """"pipeline" for a saved pipeline, "model" for a folder whose config.json a diffusers class wrote, else None."""
    if (path / PIPELINE_INDEX).is_file() or (path / "unet" / "config.json").is_file():
        return "pipeline"
    config = _read_json(path / "config.json", must_exist=False)
    return "model" if isinstance(config, dict) and "_class_name" in config else None


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel behind the model protocol of DESIGN.md §2, with the schedule and
    prediction type of its scheduler config. Unconditional, or class-conditional (num_class_embeds): then
    `null_class` is the embedding row that means "no class" (guidance's second branch), None if it has none."""

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction: str, config: ModelConfig,
                 null_class: int | None = None):
        super().__init__()
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction
        self.config = config
        self.null_class = null_class
        self.precision = "fp32"          # or "bf16" autocast: noisecraft.device.speed_up
        self.grids: dict = {}
        self.coefficients: dict = {}
        self.cast_net = None             # the bf16 copy of unet inside cast_once()

    def cast_once(self):
        """A context for a sampling loop: in bf16, the UNet's weights are cast once, not at every call."""
        return cast_once(self, self.unet)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                **cond) -> torch.Tensor:
        if cond:
            raise NoisecraftError(f"this diffusers UNet takes no {', '.join(sorted(cond))}")
        if class_labels is not None and self.config.cond != "class":
            raise NoisecraftError("this diffusers UNet is unconditional: it takes no class")
        if class_labels is None and self.config.cond == "class":
            if self.null_class is None:
                raise NoisecraftError("this diffusers UNet is class-conditional with no 'no class' embedding: give a class")
            class_labels = torch.full((x_t.shape[0],), self.null_class, device=x_t.device)
        with autocast(x_t.device, self.precision):
            return running_net(self, self.unet)(x_t, t, class_labels=class_labels, return_dict=False)[0].float()

    def null_cond(self, cond: dict) -> dict:
        if self.null_class is None or "class_labels" not in cond:
            raise NoisecraftError("this diffusers UNet has no unconditional mode (no 'no class' embedding), so "
                                  "guidance cannot be used: set guidance to 1")
        return {"class_labels": torch.full_like(cond["class_labels"], self.null_class)}


def load_diffusers(path: str | Path) -> nn.Module:
    """A local diffusers folder as a noisecraft model (eval mode, on the CPU): a DiffusersUNet, or the
    DiffusionModel inside a folder that `export_diffusers` wrote as custom components."""
    path = Path(path)
    unet_dir, scheduler_path = _locate(path)
    unet_config = _read_json(unet_dir / "config.json")
    if unet_config.get("_class_name") == GENERIC_UNET:
        return _load_generic(unet_dir, unet_config)
    size = _check_unet(unet_config, unet_dir / "config.json")
    scheduler_config = _read_json(scheduler_path) if scheduler_path else {}
    schedule, prediction = schedule_from_diffusers(scheduler_config, scheduler_path or "the DDPMScheduler defaults")
    unet = _load_unet(unet_dir)
    params = sum(p.numel() for p in unet.parameters())
    source = f"{path}" + ("" if scheduler_path else " (no scheduler config: DDPMScheduler defaults)")
    embeds = unet_config.get("num_class_embeds")
    classes = _read_classes(path, embeds) if embeds else {}
    null = classes.get("null_class")
    num_classes = (null if null is not None else embeds) or 0
    config = ModelConfig(unet=replace(_describe(unet_config, size), num_classes=num_classes), schedule=schedule.config,
                         prediction=prediction, cond="class" if embeds else "none",
                         class_names=classes.get("class_names") or ([str(i) for i in range(num_classes)] or None),
                         guidance=classes.get("guidance", 1.0),
                         description=f"diffusers {unet_config['_class_name']} ({params / 1e6:.1f}M params) from {source}")
    model = DiffusersUNet(unet, schedule, prediction, config, null)
    model.grids, model.coefficients = read_grids(path), read_coefficients(path)   # `noisecraft tune` works here too
    return model.eval()


def _load_generic(unet_dir: Path, unet_config: dict) -> nn.Module:
    from noisecraft.models import DiffusionModel, load_state, read_weights

    config = ModelConfig.from_dict(unet_config.get("noisecraft_config") or {})
    model = DiffusionModel(config)
    weights = read_weights(unet_dir / UNET_WEIGHTS)
    load_state(model.net, {k.removeprefix("model.net."): v for k, v in weights.items()}, unet_dir / UNET_WEIGHTS)
    return model.eval()


def _read_classes(path: Path, embeds: int) -> dict:
    """What noisecraft.json (written by export) says of a class-conditional folder; {} when there is none."""
    data = _read_json(path / CLASSES_FILE, must_exist=False)
    if data is None:
        return {}
    null, names = data.get("null_class") if isinstance(data, dict) else None, data.get("class_names")
    if null != embeds - 1 or not isinstance(names, list) or len(names) != null:
        raise NoisecraftError(f"{path / CLASSES_FILE} does not fit the UNet's {embeds} class embeddings (it needs "
                              f"null_class {embeds - 1} and {embeds - 1} class_names): re-export the model")
    return data


def _locate(path: Path) -> tuple[Path, Path | None]:
    """(folder of the UNet, its scheduler config or None). A bare UNet folder takes a scheduler_config.json
    beside its config, or the ../scheduler/ of the pipeline it belongs to."""
    if diffusers_kind(path) == "pipeline":
        index = _read_json(path / PIPELINE_INDEX, must_exist=False) or {}
        extra = sorted(k for k in index if not k.startswith("_") and k not in ("unet", "scheduler") and index[k] != [None, None])
        if extra:
            raise NoisecraftError(f"{path} holds a {index.get('_class_name', 'diffusers pipeline')} with {', '.join(extra)}: "
                                  "noisecraft runs pixel-space pipelines made of a unet and a scheduler (DDPMPipeline, DDIMPipeline)")
        if not (path / "unet" / "config.json").is_file():
            raise NoisecraftError(f"{path} is a diffusers pipeline without unet/config.json: the folder is incomplete")
        scheduler = path / "scheduler" / SCHEDULER_CONFIG
        if not scheduler.is_file():
            raise NoisecraftError(f"{path} is a diffusers pipeline without scheduler/{SCHEDULER_CONFIG}: the folder is incomplete")
        return path / "unet", scheduler
    for scheduler in (path / SCHEDULER_CONFIG, path.resolve().parent / "scheduler" / SCHEDULER_CONFIG):
        if scheduler.is_file():
            return path, scheduler
    return path, None


def _check_unet(config: dict, where: Path) -> int:
    """Refuse what noisecraft cannot run, naming it; returns the (square) image size."""
    cls = config.get("_class_name")
    if cls != "UNet2DModel":
        raise NoisecraftError(f"{where} describes a {cls}: noisecraft runs diffusers UNet2DModel models "
                              "(pixel-space, unconditional; no text cross-attention)")
    for key, allowed, default in (("down_block_types", DOWN_BLOCKS, ()), ("up_block_types", UP_BLOCKS, ())):
        for block in config.get(key, default):
            if block not in allowed:
                raise NoisecraftError(f"{where}: unsupported block type {block!r} in {key}: noisecraft runs UNet2DModel "
                                      f"blocks {', '.join(allowed)}")
    if config.get("mid_block_type", "UNetMidBlock2D") not in MID_BLOCKS:
        raise NoisecraftError(f"{where}: unsupported block type {config['mid_block_type']!r} in mid_block_type: "
                              "noisecraft runs UNetMidBlock2D")
    embedding = config.get("time_embedding_type", "positional")
    if embedding != "positional":
        raise NoisecraftError(f"{where}: time_embedding_type {embedding!r} is not supported: noisecraft's samplers call "
                              "the model at fractional timesteps in [0, T-1], which needs the positional embedding")
    if config.get("class_embed_type") is not None:
        raise NoisecraftError(f"{where}: class_embed_type {config['class_embed_type']!r} is not supported: noisecraft "
                              "runs unconditional UNet2DModels and class-conditional ones with num_class_embeds")
    if config.get("in_channels", 3) not in (1, 3):
        raise NoisecraftError(f"{where}: in_channels is {config['in_channels']}: noisecraft draws grey (1) or RGB (3) "
                              "images (a latent UNet needs its VAE, which noisecraft does not run)")
    if config.get("out_channels", 3) != config.get("in_channels", 3):
        raise NoisecraftError(f"{where}: out_channels {config.get('out_channels', 3)} differs from in_channels "
                              f"{config.get('in_channels', 3)} (a learned-variance output?): noisecraft needs one "
                              "prediction shaped like the input")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise NoisecraftError(f"{where}: sample_size {size} is not square: noisecraft models draw square images")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise NoisecraftError(f"{where}: sample_size is {size!r}: set it to the image size the UNet was trained at")
    return size


def _describe(config: dict, size: int) -> UNetConfig:
    """The UNet in noisecraft's terms, for `model.config` (image shape, widths, depth); the weights stay in diffusers."""
    widths = list(config.get("block_out_channels", (224, 448, 672, 896)))
    base = math.gcd(*widths)
    attn = tuple(size // 2 ** i for i, block in enumerate(config.get("down_block_types", ())) if "Attn" in block)
    return UNetConfig(image_size=size, in_channels=config.get("in_channels", 3), base_channels=base,
                      channel_mult=tuple(w // base for w in widths), num_res_blocks=config.get("layers_per_block", 2),
                      attn_resolutions=attn, head_dim=config.get("attention_head_dim") or widths[-1],
                      groups=config.get("norm_num_groups", 32), dropout=config.get("dropout", 0.0))


def _load_unet(unet_dir: Path) -> nn.Module:
    if not any(unet_dir.glob("diffusion_pytorch_model*.safetensors")) and not any(unet_dir.glob("diffusion_pytorch_model*.bin")):
        raise NoisecraftError(f"{unet_dir} has no {UNET_WEIGHTS} (or .bin): the diffusers folder is incomplete")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise NoisecraftError(f"{unet_dir} is a diffusers model: loading it needs diffusers (pip install diffusers)") from None
    try:
        return UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, torch_dtype=torch.float32,
                                           low_cpu_mem_usage=False)   # no `accelerate` warning
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NoisecraftError(f"diffusers could not load {unet_dir} ({first}): check that its weights are complete") from None


def schedule_from_diffusers(config: dict, where) -> tuple[NoiseSchedule, str]:
    """The NoiseSchedule and prediction type of a diffusers scheduler config (missing keys: DDPMScheduler's defaults).
    Betas are rebuilt in float64 from the config's formula, as diffusers builds them in float32."""
    c = DDPM_DEFAULTS | {k: v for k, v in config.items() if v is not None}
    if c.get("rescale_betas_zero_snr"):
        raise NoisecraftError(f"{where}: rescale_betas_zero_snr makes the last step pure noise (infinite sigma), "
                              "which noisecraft's schedules cannot represent")
    if "beta_schedule" not in config and "trained_betas" not in config and config.get("_class_name"):
        raise NoisecraftError(f"{where}: {config['_class_name']} has no beta schedule: noisecraft runs "
                              "variance-preserving (DDPM-style) schedules")
    T, start, end, kind = int(c["num_train_timesteps"]), float(c["beta_start"]), float(c["beta_end"]), c["beta_schedule"]
    if c.get("trained_betas") is not None:
        schedule = NoiseSchedule(torch.tensor(c["trained_betas"], dtype=torch.float64))
    elif kind == "linear":
        schedule = NoiseSchedule.linear(T, start, end)
    elif kind == "scaled_linear":       # Stable Diffusion's: linear in sqrt(beta)
        betas = torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float64) ** 2
        schedule = NoiseSchedule(betas, ScheduleConfig("scaled_linear", T, start, end))
    elif kind == "squaredcos_cap_v2":   # Nichol & Dhariwal's cosine with betas capped at 0.999: ours
        schedule = NoiseSchedule.cosine(T)
    else:
        raise NoisecraftError(f"{where}: beta_schedule {kind!r} is not supported: use linear, scaled_linear, "
                              "squaredcos_cap_v2 or trained_betas")
    return schedule, check_prediction(c["prediction_type"])


# ---------------------------------------------------------------- noisecraft model -> diffusers folder

def diffusers_unet_config(net: nn.Module) -> dict:
    """The UNet2DModel config that reproduces a noisecraft UNet exactly, or a NoisecraftError saying why none does."""
    cfg: UNetConfig = net.config
    if cfg.low_res_channels:
        raise NoisecraftError("super-resolution models do not export to diffusers: a UNet2DModel takes no low-res "
                              "input to condition on")
    if cfg.context_dim:
        raise NoisecraftError("text-conditional models do not export to diffusers: their cross-attention over "
                              "MiniLM token states has no UNet2DModel counterpart (UNet2DConditionModel attends differently)")
    if cfg.channel_mult[0] != 1:
        raise NoisecraftError(f"channel_mult starts at {cfg.channel_mult[0]}, not 1: diffusers' conv_in feeds the first "
                              "level at its own width, so this UNet has no exact UNet2DModel counterpart")
    groups = sorted({m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)})
    if groups != [cfg.groups]:
        raise NoisecraftError(f"this UNet normalizes with {groups} groups (channels not all divisible by groups="
                              f"{cfg.groups}); diffusers uses one group count everywhere, so there is no exact counterpart")
    attention = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    if all(m.norm.num_channels % cfg.head_dim == 0 for m in attention):
        head_dim = cfg.head_dim
    elif all(m.heads == 1 for m in attention):
        head_dim = None                  # diffusers then gives each attention block one head of its full width
    else:
        raise NoisecraftError(f"attention widths {sorted({m.norm.num_channels for m in attention})} are not multiples of "
                              f"head_dim {cfg.head_dim}: diffusers would split them into different heads")
    sizes = [cfg.image_size // 2 ** i for i in range(len(cfg.channel_mult))]
    down = ["AttnDownBlock2D" if s in cfg.attn_resolutions else "DownBlock2D" for s in sizes]
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_FORMAT,
        "sample_size": cfg.image_size, "in_channels": cfg.in_channels, "out_channels": cfg.in_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 0, "flip_sin_to_cos": True,
        "down_block_types": down, "up_block_types": [b.replace("Down", "Up") for b in reversed(down)],
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks, "mid_block_scale_factor": 1, "downsample_padding": 1,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": cfg.dropout, "act_fn": "silu",
        "attention_head_dim": head_dim, "norm_num_groups": cfg.groups,
        # With scale_shift, diffusers' mid-block attention has no GroupNorm unless told its group count.
        "attn_norm_num_groups": cfg.groups, "norm_eps": 1e-6, "resnet_time_scale_shift": "scale_shift",
        "add_attention": True, "class_embed_type": None, "num_train_timesteps": None,
        "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None,   # + the "no class" row, last
    }


RESNET = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
          "skip": "conv_shortcut"}


def _module_names(cfg: UNetConfig) -> dict[str, str]:
    """noisecraft module path -> diffusers module path, block by block along both UNet paths."""
    names = {"stem": "conv_in", "time_mlp.0": "time_embedding.linear_1", "time_mlp.2": "time_embedding.linear_2",
             "class_emb": "class_embedding",
             "mid.0.res": "mid_block.resnets.0", "mid.0.attn": "mid_block.attentions.0",
             "mid.1.res": "mid_block.resnets.1", "out.0": "conv_norm_out", "out.2": "conv_out"}
    levels, k = len(cfg.channel_mult), 0
    for level in range(levels):
        for j in range(cfg.num_res_blocks):
            names[f"down.{k}.res"] = f"down_blocks.{level}.resnets.{j}"
            names[f"down.{k}.attn"] = f"down_blocks.{level}.attentions.{j}"
            k += 1
        if level < levels - 1:
            names[f"down.{k}.conv"] = f"down_blocks.{level}.downsamplers.0.conv"
            k += 1
    k = 0
    for block in range(levels):                 # up_blocks[0] is the deepest level
        for j in range(cfg.num_res_blocks + 1):
            names[f"up.{k}.res"] = f"up_blocks.{block}.resnets.{j}"
            names[f"up.{k}.attn"] = f"up_blocks.{block}.attentions.{j}"
            k += 1
        if block < levels - 1:
            names[f"up.{k}.conv"] = f"up_blocks.{block}.upsamplers.0.conv"
            k += 1
    return names


def diffusers_state_dict(state: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """noisecraft UNet weights under UNet2DModel's names. Attention's 1x1 convs become linears of the same
    matrix; the fused qkv splits into to_q, to_k, to_v in that order (AttentionBlock.forward's chunk)."""
    names = _module_names(cfg)
    out = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        block = next(m for m in names if module == m or module.startswith(m + "."))
        inner, target = module[len(block) + 1:], names[block]
        if block.endswith(".res"):
            out[f"{target}.{RESNET[inner]}.{param}"] = value
        elif block.endswith(".attn") and inner == "qkv":
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3)):
                out[f"{target}.{part}.{param}"] = chunk.flatten(1) if chunk.ndim == 4 else chunk
        elif block.endswith(".attn"):
            name = {"norm": "group_norm", "proj": "to_out.0"}[inner]
            out[f"{target}.{name}.{param}"] = value.flatten(1) if value.ndim == 4 else value
        else:
            out[f"{target}.{param}"] = value
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def diffusers_scheduler_config(schedule: NoiseSchedule, prediction: str) -> dict:
    """A DDPMScheduler config with this schedule: a named beta_schedule when diffusers' formula is ours, else
    the betas themselves. x_0 clipping on, as noisecraft samples by default; trailing grids, as our samplers'
    default, so DDIMPipeline.from_pretrained visits the same timesteps as `sample(..., "ddim")`."""
    c = schedule.config
    if c.kind == "linear":
        betas = {"beta_schedule": "linear", "beta_start": c.beta_start, "beta_end": c.beta_end, "trained_betas": None}
    elif c.kind == "cosine" and c.cosine_s == 0.008:
        betas = {"beta_schedule": "squaredcos_cap_v2", "trained_betas": None}
    else:
        betas = {"beta_schedule": "linear", "trained_betas": schedule.betas.tolist()}
    return {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_FORMAT,
            "num_train_timesteps": schedule.num_timesteps, **betas, "prediction_type": prediction,
            "variance_type": "fixed_small", "clip_sample": True, "clip_sample_range": 1.0, "thresholding": False,
            "timestep_spacing": "trailing", "steps_offset": 0, "rescale_betas_zero_snr": False}


def export_diffusers(model: str | Path, out: str | Path) -> Path:
    """Write `model` (a shipped name or a model directory) as a DDPMPipeline folder at `out`: model_index.json,
    unet/ (config.json, diffusion_pytorch_model.safetensors) and scheduler/scheduler_config.json, plus pipeline.py
    and noisecraft.json for a class-conditional model. Everything is
    checked first; the folder is built under a temporary name beside `out` and renamed into place, so `out`
    is either complete or absent. An existing non-empty `out` is refused."""
    out = Path(out)
    model_dir = resolve_model_dir(model)
    if diffusers_kind(model_dir):
        raise NoisecraftError(f"{model_dir} is already a diffusers folder: diffusers loads it as it is")
    net = load_diffusion_model(model_dir, purpose="export to diffusers", pixel_space=True)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NoisecraftError(f"{out} already exists and is not an empty folder: choose a new --out or remove it")
    try:
        unet_config = diffusers_unet_config(net.net)
    except NoisecraftError:
        return _write_folder(out, generic_files(net))
    files = {PIPELINE_INDEX: _json_bytes({"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_FORMAT,
                                          "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}),
             "unet/config.json": _json_bytes(unet_config),
             f"unet/{UNET_WEIGHTS}": save_tensors(diffusers_state_dict(net.net.state_dict(), net.config.unet),
                                                  metadata={"format": "pt"}),
             f"scheduler/{SCHEDULER_CONFIG}": _json_bytes(diffusers_scheduler_config(net.schedule, net.prediction))}
    if net.config.unet.num_classes:
        files[CLASSES_FILE] = _json_bytes({"class_names": net.config.class_names, "null_class": net.config.unet.num_classes,
                                           "guidance": net.config.guidance})
        files[PIPELINE_FILE] = (Path(__file__).parent / "interop_pipeline.py").read_bytes()
    return _write_folder(out, files)


def generic_files(net) -> dict[str, bytes]:
    """The files of a custom-component export: the whole noisecraft config inside unet/config.json, the weights
    under the component's parameter names, and interop_generic.py as both the component's module and the pipeline."""
    code = (Path(__file__).parent / "interop_generic.py").read_bytes()
    state = {f"model.net.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in net.net.state_dict().items()}
    return {PIPELINE_INDEX: _json_bytes({"_class_name": "NoisecraftPipeline", "_diffusers_version": DIFFUSERS_FORMAT,
                                         "scheduler": ["diffusers", "DDPMScheduler"],
                                         "unet": [GENERIC_MODULE, GENERIC_UNET]}),
            "unet/config.json": _json_bytes({"_class_name": GENERIC_UNET, "_diffusers_version": DIFFUSERS_FORMAT,
                                             "noisecraft_config": net.config.to_dict()}),
            f"unet/{UNET_WEIGHTS}": save_tensors(state, metadata={"format": "pt"}),
            f"unet/{GENERIC_MODULE}.py": code, PIPELINE_FILE: code,
            f"scheduler/{SCHEDULER_CONFIG}": _json_bytes(diffusers_scheduler_config(net.schedule, net.prediction))}


def _write_folder(out: Path, files: dict[str, bytes]) -> Path:
    """`files` under `out`, built under a temporary name beside it and renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        os.chmod(tmp, 0o777 & ~_umask())            # mkdtemp makes a 0700 folder; give it mkdir's permissions
        os.replace(tmp, out)                         # also replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _read_json(path: Path, must_exist: bool = True):
    if not path.is_file():
        if must_exist:
            raise NoisecraftError(f"{path} is missing: the diffusers folder is incomplete")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NoisecraftError(f"{path} is not valid JSON ({getattr(e, 'msg', e)})") from None
