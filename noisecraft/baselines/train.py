"""Training the baselines with the diffusion loop's machinery (train/loop.py): the same data order,
global RNG seeding, EMA, atomic resumable checkpoints, train_log.jsonl, stop signals and NaN skipping,
with each family's own objective. One process (no torchrun, no gradient accumulation)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from noisecraft.baselines import BaselineConfig, build, check_family, preset
from noisecraft.baselines.gan import Discriminator, Generator, discriminator_loss, generator_loss
from noisecraft.data import load_dataset
from noisecraft.errors import NoisecraftError
from noisecraft.io import save_png
from noisecraft.models import save_model
from noisecraft.train.checkpoint import clean_partial_writes, load_checkpoint, rng_state, save_checkpoint
from noisecraft.train.ema import EMA
from noisecraft.train.loop import (LOG_FILE, TrainingInterrupted, TrainOptions, adamw, epoch_order, lr_lambda, new_interval,
                                   open_log, restore, seed_process, stop_signals, tensorboard_writer_class,
                                   write_log)
from noisecraft.viz import make_grid

# Peak learning rates used when --lr is not given: Adam's usual 1e-3 for the likelihood models, DCGAN's 2e-4.
LEARNING_RATES = {"vae": 1e-3, "gan": 2e-4, "autoregressive": 1e-3}
GAN_BETAS = (0.5, 0.999)                      # Radford et al. 2016: beta1 0.5 steadies the adversarial game
DIFFUSION_ONLY = ("cond", "sr_factor", "prediction", "schedule", "min_snr_gamma")


def check_options(opts: TrainOptions) -> None:
    """The family and preset exist, and no option that only diffusion has was changed from its default."""
    check_family(opts.model)
    preset(opts.model, opts.preset)
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    for name in DIFFUSION_ONLY:
        if getattr(opts, name) != defaults[name]:
            raise NoisecraftError(f"--{name.replace('_', '-')} applies to diffusion models only: drop it for "
                                  f"--model {opts.model}")
    if opts.grad_accum != 1:
        raise NoisecraftError(f"--grad-accum applies to diffusion models only: drop it for --model {opts.model}")


class LikelihoodTrainer:
    """VAE and PixelCNN: minimize the model's own loss (negative beta-ELBO, or exact NLL) per dimension."""

    def __init__(self, config: BaselineConfig, opts: TrainOptions, device: torch.device):
        self.model = build(config).to(device)          # checkpointed, and averaged for the model directory
        self.ema_target = self.model
        self.optimizer = adamw(self.model.parameters(), opts.lr, opts.weight_decay)
        self.clip = opts.grad_clip

    def step(self, x: torch.Tensor, noise_gen: torch.Generator) -> tuple[dict | None, str]:
        """One optimizer step; (logged values, "") or (None, why it was skipped)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model.loss(x, noise_gen)
        if not math.isfinite(loss.item()):
            return None, f"loss {loss.item()}"
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None, f"gradient norm {float(norm)}"
        self.optimizer.step()
        return {"loss": loss.item()}, ""


class GANTrainer:
    """Alternating updates, discriminator first. One Adam over two parameter groups (generator, then
    discriminator): Adam skips parameters whose .grad is None, so each phase steps only its own network,
    exactly as two optimizers would, and the checkpoint holds one optimizer state. A non-finite generator
    phase counts the step as skipped although the discriminator's update of that step stands."""

    def __init__(self, config: BaselineConfig, opts: TrainOptions, device: torch.device):
        self.generator, self.discriminator = Generator(config.net).to(device), Discriminator(config.net).to(device)
        self.model = nn.ModuleDict({"generator": self.generator, "discriminator": self.discriminator})
        self.ema_target = self.generator
        self.optimizer = torch.optim.Adam([{"params": self.generator.parameters()},
                                           {"params": self.discriminator.parameters()}], lr=opts.lr, betas=GAN_BETAS)
        self.kind, self.z_dim, self.clip = config.net.loss, config.net.z_dim, opts.grad_clip

    def _apply(self, loss: torch.Tensor, net: nn.Module, name: str) -> str:
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            return f"{name} loss {loss.item()}"
        params = list(net.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return f"{name} gradient norm {float(norm)}"
        self.optimizer.step()
        return ""

    def step(self, x: torch.Tensor, noise_gen: torch.Generator) -> tuple[dict | None, str]:
        z = torch.randn(len(x), self.z_dim, generator=noise_gen).to(x.device)
        fake = self.generator(z)                                                    # (B, C, H, W)
        d_loss = discriminator_loss(self.discriminator(x), self.discriminator(fake.detach()), self.kind)
        if why := self._apply(d_loss, self.discriminator, "discriminator"):
            return None, why
        g_loss = generator_loss(self.discriminator(fake), self.kind)
        if why := self._apply(g_loss, self.generator, "generator"):
            return None, why
        return {"loss": d_loss.item(), "g_loss": g_loss.item()}, ""


def train_baseline(opts: TrainOptions, out: Path, log: Callable[[str], None], progress: bool) -> Path:
    """Train a VAE, GAN or PixelCNN as TrainOptions say; the model directory is `out` (loop.train has
    validated the options and `out`)."""
    from tqdm import tqdm

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise NoisecraftError(f"--model {opts.model} trains in one process: drop --nproc (and torchrun)")
    device = torch.device(opts.device)
    net_config = preset(opts.model, opts.preset)
    data = load_dataset(opts.data, image_size=net_config.image_size, channels=net_config.in_channels, lazy=True)
    n = len(data.images)
    if n == 0:
        raise NoisecraftError(f"data source {opts.data!r} has no images")
    if opts.batch_size > n:
        raise NoisecraftError(f"--batch-size {opts.batch_size} is larger than the {n} images of {opts.data}: lower it")
    config = BaselineConfig(opts.model, net_config, data=opts.data,
                            description=f"{opts.model} ({opts.preset} preset) trained on {opts.data}")
    writer_class = tensorboard_writer_class() if opts.tensorboard else None

    seed_process(opts.seed, 0)
    trainer = (GANTrainer if opts.model == "gan" else LikelihoodTrainer)(config, opts, device)
    ema = EMA(trainer.ema_target, opts.ema_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lr_lambda(opts.warmup_steps))
    noise_gen = torch.Generator().manual_seed(opts.seed + 1)
    step, epoch, pos, skipped, bad_in_row, saved_step = 0, 0, 0, 0, 0, None

    clean_partial_writes(out)
    if opts.resume:
        ckpt = load_checkpoint(out)
        step, epoch, pos, skipped, bad_in_row = restore(ckpt, opts, trainer.model, ema, trainer.optimizer, lr_scheduler,
                                                        noise_gen, 0, device)
        saved_step = step
        for path, why in ckpt.corrupt:
            log(f"warning: checkpoint {path.name} is corrupt ({why}); resumed from the older {ckpt.path.name}")
            path.replace(path.with_name(path.name + ".corrupt"))
        log(f"resuming {out} at step {step}")

    images = data.images.to(device) if isinstance(data.images, torch.Tensor) else data.images
    order = epoch_order(n, opts.seed, epoch)
    B = opts.batch_size

    def fetch(rows: torch.Tensor) -> torch.Tensor:
        return images[rows.to(device)] if isinstance(images, torch.Tensor) else images[rows].to(device)

    def checkpoint() -> None:
        nonlocal saved_step
        rng = {"noise": noise_gen.get_state()} | {f"rank0.{k}": v for k, v in rng_state(device).items()}
        save_checkpoint(out, model=trainer.model, ema=ema, optimizer=trainer.optimizer, lr_scheduler=lr_scheduler,
                        rng=rng, progress={"step": step, "epoch": epoch, "pos": pos, "skipped": skipped,
                                           "bad_in_row": bad_in_row},
                        options=asdict(opts), keep=opts.keep_checkpoints)
        save_model(out, config, ema.state_dict())
        every = opts.checkpoint_every if opts.sample_every is None else opts.sample_every
        if every and step % every == 0:
            write_sample_grid(out / "samples" / f"step-{step:07d}.png", config, ema, device)
        saved_step = step

    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=opts.max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    interval, extra = new_interval(time.monotonic()), []
    log_file = open_log(out / LOG_FILE)
    writer = writer_class(str(out / "tensorboard")) if writer_class else None
    trainer.model.train()
    try:
        with stop_signals() as signals:
            while opts.max_steps is None or step < opts.max_steps:
                if pos + B > n:                                         # drop the ragged tail, start a new epoch
                    epoch, pos = epoch + 1, 0
                    order = epoch_order(n, opts.seed, epoch)
                x = fetch(order[pos:pos + B])                           # (B, C, H, W)
                pos += B
                values, why = trainer.step(x, noise_gen)
                interval["batches"] += 1
                if values is not None:
                    lr_scheduler.step()
                    step += 1
                    ema.update(trainer.ema_target, step)
                    bad_in_row = 0
                    interval["losses"].append(values["loss"])
                    extra.append(values.get("g_loss"))
                    bar.update(1)
                    if step % opts.log_every == 0:
                        more = {"g_loss": sum(extra) / len(extra)} if opts.model == "gan" else {}
                        interval = write_log(log_file, writer, interval, step=step, batch=B, family=opts.model,
                                             lr=lr_scheduler.get_last_lr()[0], minutes=(time.monotonic() - start) / 60,
                                             epoch=epoch, skipped_total=skipped, **more)
                        extra = []
                        bar.set_postfix(loss=f"{interval['last']['loss']:.4f}")
                    if step % opts.checkpoint_every == 0:
                        checkpoint()
                else:
                    skipped, bad_in_row = skipped + 1, bad_in_row + 1
                    interval["skipped"] += 1
                    log(f"warning: {why} after step {step}: batch skipped ({bad_in_row} in a row, {skipped} in all)")
                    if bad_in_row >= opts.max_bad_steps:
                        kept = (f"the last good checkpoint (step {saved_step}) is kept in {out}" if saved_step is not None
                                else "no checkpoint was written")
                        raise NoisecraftError(f"{why} for {bad_in_row} batches in a row after step {step}; {kept}: "
                                              "lower --lr or check the data")
                if signals:
                    if saved_step != step:
                        checkpoint()
                    raise TrainingInterrupted(signals[0], step, out)
                if opts.max_minutes is not None and time.monotonic() - start >= 60 * opts.max_minutes:
                    break
            if saved_step != step:
                checkpoint()
    finally:
        bar.close()
        log_file.close()
        if writer is not None:
            writer.close()
        if not isinstance(images, torch.Tensor):
            images.close()
    return out


def write_sample_grid(path: Path, config: BaselineConfig, ema: EMA, device: torch.device, n: int = 64) -> None:
    """64 samples from the EMA weights with a fixed seed, so grids across steps compare."""
    model = build(config).to(device)
    model.load_state_dict(ema.state_dict())
    x = model.eval().sample(n, torch.Generator().manual_seed(0))
    save_png(path, make_grid(x, nrow=8), {"step": path.stem, "family": config.family})
