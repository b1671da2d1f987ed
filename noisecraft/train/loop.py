"""The training loop (DDPM Algorithm 1): sample x_0, t and eps; regress the network output on
its target with MSE; AdamW with warm-up and gradient clipping; EMA weights; atomic checkpoints."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from noisecraft.data import load_dataset
from noisecraft.diffusion import ScheduleConfig, check_prediction, diffusion_loss, q_sample
from noisecraft.errors import NoisecraftError
from noisecraft.io import save_png
from noisecraft.models import CONFIG_FILE, DiffusionModel, ModelConfig, load_state, save_model
from noisecraft.nets import get_preset
from noisecraft.nets.text import DEFAULT_ENCODER, MAX_TOKENS
from noisecraft.samplers import sample
from noisecraft.tasks.common import box_down
from noisecraft.train.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint
from noisecraft.train.ema import EMA
from noisecraft.viz import make_grid

CFG_DROPOUT = 0.1  # condition dropped 10% of the time, for classifier-free guidance (Ho & Salimans 2021)
DEFAULT_GUIDANCE = 3.0  # written into a conditional model's config; a shipped model's is set by measurement


@dataclass
class TrainOptions:
    data: str = "digits"
    out: str = "runs/digits"
    preset: str = "tiny"
    model: str = "diffusion"
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    max_steps: int | None = None
    max_minutes: float | None = None
    checkpoint_every: int = 500
    sample_every: int | None = None        # None: at every checkpoint; 0: never
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    cond: str = "none"
    sr_factor: int = 4                      # cond "superres": train to upsample box-averaged (H/f, W/f) images
    prediction: str = "epsilon"
    schedule: str = "linear"
    min_snr_gamma: float | None = 5.0       # Hang et al. (2023); None or 0 turns it off
    resume: bool = False
    device: str = "cpu"

    def validate(self) -> "TrainOptions":
        if self.model != "diffusion":
            raise NoisecraftError(f"--model {self.model} is not available in this version: use --model diffusion")
        if self.cond not in ("none", "class", "text", "superres"):
            raise NoisecraftError(f"unknown --cond {self.cond!r}: use none, class, text or superres")
        check_prediction(self.prediction)
        size = get_preset(self.preset).image_size
        if self.cond == "superres" and (self.sr_factor < 2 or size % self.sr_factor):
            raise NoisecraftError(f"--sr-factor must be at least 2 and divide the {self.preset} preset's image size "
                                  f"{size}, got {self.sr_factor}")
        if self.schedule not in ("linear", "cosine"):
            raise NoisecraftError(f"unknown --schedule {self.schedule!r}: use linear or cosine")
        for name in ("batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise NoisecraftError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise NoisecraftError(f"--lr must be a positive number, got {self.lr}")
        if self.max_steps is None and self.max_minutes is None:
            raise NoisecraftError("say when to stop: pass --max-steps or --max-minutes")
        if (self.max_steps is not None and self.max_steps < 1) or (self.max_minutes is not None and self.max_minutes <= 0):
            raise NoisecraftError("--max-steps and --max-minutes must be positive")
        if self.seed < 0:
            raise NoisecraftError(f"--seed must be >= 0, got {self.seed}")
        return self

    # Options that must not change across a resume (the rest, like max_steps, may). The learning
    # rate is restored with the optimizer state, so a different --lr would be silently ignored.
    FIXED = ("data", "preset", "batch_size", "lr", "warmup_steps", "cond", "sr_factor", "prediction", "schedule",
             "seed", "ema_decay", "min_snr_gamma")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch depends only on (seed, epoch), so resuming mid-epoch is exact."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def train(opts: TrainOptions, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Train and return the model directory (`opts.out`). Stops at max_steps or max_minutes,
    whichever comes first; writes the model and a checkpoint every `checkpoint_every` steps."""
    from tqdm import tqdm

    opts.validate()
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise NoisecraftError(f"--out {out} is a file: choose a directory")
    if not opts.resume and (out / CONFIG_FILE).exists():
        raise NoisecraftError(f"{out} already holds a model: pass --resume to continue it, or choose another --out")
    device = torch.device(opts.device)

    unet = get_preset(opts.preset)
    data = load_dataset(opts.data, image_size=unet.image_size, channels=unet.in_channels)
    if len(data.images) == 0:
        raise NoisecraftError(f"data source {opts.data!r} has no images")
    if opts.cond == "class":
        if data.labels is None:
            raise NoisecraftError(f"--cond class needs labels, and {opts.data} has none (use subfolders per class)")
        unet = replace(unet, num_classes=len(data.class_names))
    captions = None
    if opts.cond == "text":
        captions, encoder = text_table(data, opts.data)
        captions = tuple(v.to(device) for v in captions)
        unet = replace(unet, context_dim=encoder.width)
    if opts.cond == "superres":
        unet = replace(unet, low_res_channels=unet.in_channels)
    schedule_cfg = ScheduleConfig(kind=opts.schedule)
    config = ModelConfig(unet=unet, schedule=schedule_cfg, prediction=opts.prediction, cond=opts.cond, data=opts.data,
                         class_names=data.class_names if opts.cond == "class" else None,
                         sr_factor=opts.sr_factor if opts.cond == "superres" else 0,
                         guidance=DEFAULT_GUIDANCE if opts.cond in ("class", "text") else 1.0,
                         text_encoder=DEFAULT_ENCODER if opts.cond == "text" else None, max_tokens=MAX_TOKENS,
                         description=f"{opts.preset} UNet trained on {opts.data}")

    torch.manual_seed(opts.seed)
    model = DiffusionModel(config).to(device)
    ema = EMA(model.net, opts.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opts.warmup_steps))
    noise_gen = torch.Generator().manual_seed(opts.seed + 1)
    step, epoch, pos, good_step = 0, 0, 0, None

    if opts.resume:
        tensors, meta = load_checkpoint(out)
        changed = [k for k in TrainOptions.FIXED if meta["options"].get(k) != asdict(opts)[k]]
        if changed:
            raise NoisecraftError(f"--resume with different {', '.join(changed)} than the checkpoint: use the original values")
        load_state(model.net, tensors["model"], out / STATE_FILE)
        ema.load_state_dict(tensors["ema"])
        optimizer.load_state_dict(meta["optimizer_state"])
        lr_scheduler.load_state_dict(meta["lr_scheduler"])
        torch.set_rng_state(tensors["rng"]["torch"])
        noise_gen.set_state(tensors["rng"]["noise"])
        step, epoch, pos = (meta["progress"][k] for k in ("step", "epoch", "pos"))
        good_step = step
        log(f"resuming {out} at step {step}")

    images = data.images.to(device)                                     # (N, C, H, W), preloaded
    labels = data.labels.to(device) if data.labels is not None else None
    alpha_bar = model.schedule.alphas_cumprod.to(device=device, dtype=torch.float32)
    T, n = model.schedule.num_timesteps, len(images)
    order = epoch_order(n, opts.seed, epoch)

    def checkpoint() -> None:
        save_model(out, config, ema.state_dict())
        save_checkpoint(out, model=model.net, ema=ema, optimizer=optimizer, lr_scheduler=lr_scheduler,
                        rng={"torch": torch.get_rng_state(), "noise": noise_gen.get_state()},
                        progress={"step": step, "epoch": epoch, "pos": pos}, options=asdict(opts))
        every = opts.checkpoint_every if opts.sample_every is None else opts.sample_every
        if every and step % every == 0:
            write_sample_grid(out / "samples" / f"step-{step:07d}.png", config, ema, device, images[:64])

    start = time.monotonic()
    bar = tqdm(total=opts.max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    seen, t_rate, losses = 0, time.monotonic(), []
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "train_log.jsonl").open("a")
    model.train()
    while True:
        if opts.max_steps is not None and step >= opts.max_steps:
            break
        if opts.max_minutes is not None and time.monotonic() - start >= 60 * opts.max_minutes:
            break
        if pos + opts.batch_size > n:                                   # drop the ragged tail, start a new epoch
            epoch, pos = epoch + 1, 0
            order = epoch_order(n, opts.seed, epoch)
        idx = order[pos:pos + opts.batch_size].to(device)
        pos += opts.batch_size
        x0 = images[idx]
        t = torch.randint(0, T, (len(idx),), generator=noise_gen).to(device)
        noise = torch.randn(x0.shape, generator=noise_gen).to(device)
        x_t = q_sample(model.schedule, x0, t, noise)                    # DDPM eq. 4
        cond = {}
        if labels is not None and opts.cond == "class":
            y = labels[idx]
            drop = torch.rand(len(idx), generator=noise_gen).to(device) < CFG_DROPOUT
            cond["class_labels"] = torch.where(drop, torch.full_like(y, config.unet.num_classes), y)
        if captions is not None:
            states, masks, caption_index = captions
            drop = torch.rand(len(idx), generator=noise_gen).to(device) < CFG_DROPOUT
            c = torch.where(drop, torch.zeros_like(idx), caption_index[idx])        # row 0: the empty prompt
            cond["context"], cond["context_mask"] = states[c], masks[c]
        if opts.cond == "superres":
            cond["low_res"] = box_down(x0, opts.sr_factor)                # SR3: learn p(x_0 | y), y = A x_0
        loss = diffusion_loss(model(x_t, t.float(), **cond), x0, noise, alpha_bar[t], opts.prediction,
                              opts.min_snr_gamma or None)
        if not torch.isfinite(loss):
            bar.close()
            log_file.close()
            kept = f"the last good checkpoint (step {good_step}) is kept in {out}" if good_step else "no checkpoint was written"
            raise NoisecraftError(f"loss became {loss.item()} at step {step + 1}; {kept}: lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        step += 1
        ema.update(model.net, step)
        seen += len(idx)
        losses.append(loss.item())
        bar.update(1)
        if step % 10 == 0:
            now = time.monotonic()
            record = {"step": step, "loss": sum(losses) / len(losses), "img_s": seen / max(now - t_rate, 1e-9),
                      "lr": lr_scheduler.get_last_lr()[0], "minutes": (now - start) / 60}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_s']:.0f}")
            seen, t_rate, losses = 0, now, []
        if step % opts.checkpoint_every == 0:
            checkpoint()
            good_step = step
    bar.close()
    log_file.close()
    if good_step != step:
        checkpoint()
    return out


def text_table(data, source: str):
    """Every distinct caption encoded once by the frozen text encoder: (states (U, L, D), masks (U, L),
    caption index per image), with row 0 the empty prompt that condition dropout swaps in."""
    from noisecraft.nets.text import TextEncoder

    if getattr(data, "captions", None) is None:
        raise NoisecraftError(f"--cond text needs captions, and {source} has none: use shapes, emoji, or a folder "
                              "with metadata.jsonl")
    unique = list(dict.fromkeys(["", *data.captions]))
    row = {c: i for i, c in enumerate(unique)}
    encoder = TextEncoder(DEFAULT_ENCODER, MAX_TOKENS)
    states, masks, _ = encoder.encode(unique)
    return (states, masks, torch.tensor([row[c] for c in data.captions])), encoder


def write_sample_grid(path: Path, config: ModelConfig, ema: EMA, device, examples: torch.Tensor, n: int = 64) -> None:
    """A grid from the EMA weights with 50 DDIM steps, fixed seed, so grids across steps compare. A
    super-resolution model upsamples the first `examples` (training images) box-averaged."""
    model = DiffusionModel(config).to(device)
    model.net.load_state_dict(ema.state_dict())
    model.eval()
    cond = {}
    if config.unet.num_classes:
        cond["class_labels"] = torch.arange(n, device=device) % config.unet.num_classes
    if config.sr_factor:
        n = min(n, len(examples))
        cond["low_res"] = box_down(examples[:n], config.sr_factor)
    x = sample(model, (n, *config.image_shape), sampler="ddim", steps=50,
               generator=torch.Generator().manual_seed(0), cond=cond)
    save_png(path, make_grid(x, nrow=8), {"step": path.stem})
