"""The `noisecraft` command: argument parsing and calling the library, nothing else.

User errors become one line `error: ...` on stderr and exit code 2."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from noisecraft.device import keep_freed_memory
from noisecraft.errors import NoisecraftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Diffusion image generation: train, sample, and see the process.")

QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
DEVICE = typer.Option("auto", help="auto | cpu | cuda (auto picks cuda when present).")
PRECISION = typer.Option("fp32", help="fp32 | bf16 (mixed precision: convolutions and matrix products in bfloat16; "
                                      "fastest where the CPU has AMX or on tensor-core GPUs, see docs/benchmarks.md).")
COMPILE = typer.Option(False, "--compile", help="torch.compile the model: a slow first call for each input shape "
                                                "(25-75 s on 2 CPU cores), then fused kernels (needs a C++ compiler on CPU).")


def _check_seed(seed: int) -> int:
    if seed < 0:
        raise NoisecraftError(f"--seed must be >= 0, got {seed}")
    return seed


@app.command()
def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., help="Model directory to create (config.json, model.safetensors, checkpoint/)."),
    data: str = typer.Option("digits", help="digits | fashion-mnist | faces | shapes | emoji | an image folder | "
                                            "tar shards (shards-{000000..000009}.tar, or a folder of .tar files)."),
    preset: str = typer.Option("tiny", help="UNet preset: tiny | mnist | shapes | small | base, or the shapes "
                                            "ablations shapes-nopool | shapes-nopool-x32 (with --latent: its "
                                            "widths, on the latents' size); for the other families: tiny (16x16 "
                                            "grey) | mnist (28x28 grey); vae also tiny-spatial | base (spatial "
                                            "latents for --latent)."),
    model: str = typer.Option("diffusion", help="Model family: diffusion | vae | gan | autoregressive "
                                                "(docs/families.md)."),
    batch_size: int = typer.Option(32, help="Global batch size: the same whatever the number of processes."),
    grad_accum: int = typer.Option(1, help="Split each process's share of the batch into N micro-batches "
                                           "(for a global batch larger than memory)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: 2e-3 for diffusion, 1e-3 for vae "
                                                  "and autoregressive, 2e-4 for gan)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps in total."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop after this many minutes of this run."),
    checkpoint_every: int = typer.Option(500, help="Write the model and a resumable checkpoint every N steps."),
    keep_checkpoints: int = typer.Option(3, help="Keep the newest K checkpoints in checkpoint/."),
    sample_every: Optional[int] = typer.Option(None, help="Write a sample grid every N steps (default: at checkpoints; 0: never)."),
    log_every: int = typer.Option(10, help="Append a train_log.jsonl record every N steps."),
    max_bad_steps: int = typer.Option(5, help="Stop after N batches in a row with a NaN/inf loss (each is skipped)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its newest readable checkpoint."),
    seed: int = typer.Option(0, help="Same seed and options give the same weights on CPU."),
    cond: str = typer.Option("none", help="none | class | text (captions through a frozen text encoder) | superres "
                                           "(SR3: learn to upsample box-averaged images by --sr-factor)."),
    sr_factor: int = typer.Option(4, help="--cond superres: the upscaling factor; it must divide the preset's image size."),
    prediction: str = typer.Option("epsilon", help="epsilon | sample | v_prediction."),
    schedule: str = typer.Option("linear", help="Noise schedule: linear | cosine."),
    min_snr_gamma: float = typer.Option(5.0, help="Min-SNR-gamma loss weighting (Hang et al. 2023); 0 turns it off."),
    ema_decay: float = typer.Option(0.999, help="EMA decay of the weights used for sampling."),
    latent: Optional[Path] = typer.Option(None, help="Latent diffusion: a VAE model directory (train --model vae "
                                                     "--preset base); the UNet learns its latents of --data, and "
                                                     "--out keeps a copy of the VAE (docs/latent.md)."),
    init: Optional[str] = typer.Option(None, help="Start from the weights of this model directory (or shipped name), "
                                                  "which must have this run's preset and conditioning: fine-tuning, "
                                                  "or more training for a finished model."),
    tensorboard: bool = typer.Option(False, help="Also log to OUT/tensorboard (needs the tensorboard package)."),
    nproc: int = typer.Option(1, help="Processes on this machine (one per GPU, or CPU processes with gloo): "
                                      "launches torchrun. Several machines: run torchrun yourself (docs/training.md)."),
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    device: str = DEVICE,
    quiet: bool = QUIET,
):
    """Train a denoising model on a data source. Exit code 130/143 after SIGINT/SIGTERM (a checkpoint
    was written; continue with --resume)."""
    import os

    from noisecraft.baselines.train import LEARNING_RATES
    from noisecraft.device import resolve_device
    from noisecraft.train.loop import TrainOptions, TrainingInterrupted, train as run

    if lr is None:
        lr = LEARNING_RATES.get(model, TrainOptions.lr)
    if nproc < 1:
        raise NoisecraftError(f"--nproc must be at least 1, got {nproc}")
    if nproc > 1:
        if "WORLD_SIZE" in os.environ:
            raise NoisecraftError("--nproc starts torchrun itself: drop it when running under torchrun")
        raise typer.Exit(_launch_torchrun(ctx, nproc))
    opts = TrainOptions(data=data, out=str(out), preset=preset, model=model, batch_size=batch_size,
                        grad_accum=grad_accum, lr=lr, max_steps=max_steps, max_minutes=max_minutes,
                        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, sample_every=sample_every,
                        log_every=log_every, max_bad_steps=max_bad_steps, resume=resume, seed=_check_seed(seed),
                        cond=cond, sr_factor=sr_factor, prediction=prediction, schedule=schedule,
                        min_snr_gamma=min_snr_gamma, ema_decay=ema_decay, tensorboard=tensorboard,
                        device=str(resolve_device(device)), precision=precision, compile=compile_,
                        latent=str(latent) if latent is not None else None, init=init)
    try:
        path = run(opts, log=lambda msg: typer.echo(msg, err=True), progress=not quiet)
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"interrupted: {e}", err=True)
        raise typer.Exit(128 + e.signum) from None
    if os.environ.get("RANK", "0") == "0":                  # under torchrun, one line for the whole job
        typer.echo(f"model written to {path}")


def _launch_torchrun(ctx: typer.Context, nproc: int) -> int:
    """Run this same `train` command under torchrun with `nproc` processes; its exit code. The options
    given on the command line are passed on (all but --nproc); SIGTERM is passed to torchrun, which
    passes it to the workers (Ctrl-C reaches them directly, as one process group)."""
    import signal
    import subprocess

    from noisecraft.train.distributed import torchrun_command

    args: list[str] = []
    for param in ctx.command.params:
        if param.name == "nproc" or ctx.get_parameter_source(param.name).name == "DEFAULT":
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    child = subprocess.Popen(torchrun_command(nproc, args))
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        child.send_signal(signum)
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # torchrun reports its own termination as a failure (1); the workers checkpointed and exited 143.
    return 128 + received[0] if received else code


@app.command("plot-log")
def plot_log(
    run_dir: Path = typer.Argument(..., help="A training run's --out folder (it holds train_log.jsonl)."),
    out: Optional[Path] = typer.Option(None, help="PNG to write (default: RUN_DIR/train_log.png)."),
):
    """Draw a training run's loss and throughput curves from its train_log.jsonl."""
    from noisecraft.io import atomic_write_bytes
    from noisecraft.train.metrics import log_figure, read_log
    from noisecraft.viz import figure_png

    records = read_log(run_dir)
    target = out or run_dir / "train_log.png"
    atomic_write_bytes(target, figure_png(log_figure(records, title=str(run_dir))))
    typer.echo(f"{len(records)} records, steps {records[0]['step']}..{records[-1]['step']}: plot written to {target}")


@app.command()
def sample(
    ctx: typer.Context,
    out: Path = typer.Option(..., help="Folder for 0000.png, 0001.png, ... and grid.png."),
    model: str = typer.Option("digits", help="A shipped model name (see `noisecraft models`), a model directory, "
                                             "or a local diffusers folder (DDPMPipeline save or UNet2DModel)."),
    n: int = typer.Option(16, help="Number of images."),
    sampler: str = typer.Option("auto", help="Sampler name (see noisecraft.SAMPLERS), or auto: the best measured "
                                             "for --steps model calls."),
    steps: Optional[int] = typer.Option(None, help="Solver steps (default: the sampler's own; auto: 10)."),
    spacing: Optional[str] = typer.Option(None, help="Timestep grid: leading | trailing | linspace | karras | logsnr | "
                                                     "tuned (a grid saved by `noisecraft tune`) | comma-separated timesteps."),
    eta: Optional[float] = typer.Option(None, help="Noise of DDIM/ancestral steps (0 deterministic, 1 = DDPM); default: the sampler's."),
    seed: int = typer.Option(0, help="Image i uses seed SEED+i."),
    class_: Optional[str] = typer.Option(None, "--class", help="Class index or name (class-conditional models)."),
    prompt: Optional[str] = typer.Option(None, help="Text prompt; for a class-conditional model, one naming a class."),
    negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt: guidance steers away from it."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (1 = off; default: the model's)."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    gif: Optional[Path] = typer.Option(None, help="Also write the reverse process (x_t beside predicted x_0) as a GIF."),
    clip: bool = typer.Option(True, help="Clip each x_0 estimate to [-1, 1]."),
    dynamic_threshold: Optional[float] = typer.Option(None, help="Imagen's dynamic thresholding at this quantile "
                                                                 "(e.g. 0.995) instead of plain clipping."),
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    device: str = DEVICE,
    quiet: bool = QUIET,
):
    """Generate images from pure noise."""
    from noisecraft.device import check_precision, resolve_device, speed_up
    from noisecraft.io import save_gif
    from noisecraft.models import load_model
    from noisecraft.samplers import as_images, plan, sample as run_sampler
    from noisecraft.samplers.common import check_threshold
    from noisecraft.viz import reverse_frame

    _check_seed(seed)
    if n < 1 or batch_size < 1:
        raise NoisecraftError("--n and --batch-size must be at least 1")
    check_precision(precision)
    dev = resolve_device(device)
    net = load_model(model, device=dev)
    if hasattr(net, "model_config"):
        _sample_baseline(ctx, net, out, model=model, n=n, seed=seed, batch_size=batch_size, quiet=quiet)
        return
    speed_up(net, precision, compile_)
    if spacing is not None and "," in spacing:                              # an explicit grid: 999,600,200
        try:
            spacing = [float(v) for v in spacing.split(",")]
        except ValueError:
            raise NoisecraftError(f"--spacing as a grid must be comma-separated numbers, got {spacing!r}") from None
    p = plan(net, net.schedule, sampler, steps, spacing, eta)              # validates before any output
    check_threshold(dynamic_threshold)
    sampler, steps, eta = p.sampler, p.steps, p.eta
    spacing_label = ",".join(f"{t:g}" for t in p.grid.tolist()) if p.spacing == "custom" else p.spacing
    frames, record_every = [], max(1, steps // 100)

    def run(start, _, gens, cond, negative, g, tick):
        def callback(i, x_t, x0):
            tick()
            if gif is not None and start == 0 and (i % record_every == 0 or i == steps - 1):
                frames.append(reverse_frame(as_images(net, x_t[:16]), as_images(net, x0[:16]), f"step {i + 1}/{steps}",
                                            nrow=4))

        return run_sampler(net, (len(gens), *net.config.image_shape), sampler=sampler, steps=steps,
                           spacing=p.grid if p.spacing == "custom" else p.spacing, eta=eta, generator=gens, cond=cond,
                           guidance_scale=g, negative_cond=negative, callback=callback, clip_denoised=clip,
                           dynamic_threshold=dynamic_threshold)

    _run_task(run, net, None, out, n=n, model=model, seed=seed, batch_size=batch_size, class_=class_, prompt=prompt,
              negative_prompt=negative_prompt, guidance=guidance, calls_per_batch=steps, quiet=quiet, device=dev,
              meta={"sampler": sampler, "steps": steps, "spacing": spacing_label, "eta": eta, "precision": precision})
    if gif is not None:
        save_gif(gif, frames)
        typer.echo(f"reverse process written to {gif}")


def _sample_baseline(ctx: typer.Context, net, out: Path, *, model: str, n: int, seed: int, batch_size: int,
                     quiet: bool) -> None:
    """`sample` for a VAE, GAN or autoregressive model: one pass (or one pass per pixel), so the sampler,
    conditioning and guidance options have nothing to act on; given, they are an error rather than ignored."""
    from tqdm import tqdm

    from noisecraft.baselines import sample_seeded
    from noisecraft.io import save_png
    from noisecraft.viz import make_grid, to_pil

    family = net.model_config.family
    given = [p.opts[0] for p in ctx.command.params if p.name in DIFFUSION_SAMPLE_OPTIONS
             and ctx.get_parameter_source(p.name).name != "DEFAULT"]
    if given:
        raise NoisecraftError(f"{', '.join(given)} applies to diffusion models only; {model} is a {family} model, "
                              "which samples without a sampler, condition or guidance: drop it")
    bar = tqdm(total=-(-n // batch_size), disable=quiet, unit="batch", dynamic_ncols=True)
    x = sample_seeded(net, range(seed, seed + n), batch_size, callback=lambda: bar.update(1))
    bar.close()
    meta = {"model": model, "family": family}
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_png(out / f"{i:04d}.png", to_pil(x[i]), meta | {"seed": seed + i})
    save_png(out / "grid.png", make_grid(x), meta | {"seed": f"{seed}..{seed + n - 1}"})
    typer.echo(f"{n} images written to {out}")


DIFFUSION_SAMPLE_OPTIONS = ("sampler", "steps", "spacing", "eta", "class_", "prompt", "negative_prompt", "guidance",
                            "gif", "clip", "dynamic_threshold", "precision", "compile_")


@app.command()
def tune(
    model: str = typer.Option(..., help="A model directory (or shipped name); grids.json is written into it."),
    sampler: str = typer.Option("unipc", help="A deterministic sampler; 'learned' also fits its coefficients."),
    steps: str = typer.Option("10", help="Comma-separated step counts, e.g. 5,8,10."),
    n: int = typer.Option(64, help="Calibration images (noise drawn from --seed); learned fits on N and scores grids on N more."),
    seed: int = typer.Option(0, help="Seed of the calibration noise."),
    reference_steps: int = typer.Option(200, help="Steps of the 3rd-order reference solve."),
    max_evals: Optional[int] = typer.Option(None, help="Grid evaluations per Nelder-Mead start (default 40 x (steps + 1))."),
    device: str = DEVICE,
    quiet: bool = QUIET,
):
    """Tune a timestep grid for a model, sampler and step count; sample with it via --spacing tuned
    (or --sampler learned, whose coefficients are fitted with the grid)."""
    from tqdm import tqdm

    from noisecraft.device import resolve_device
    from noisecraft.models import load_diffusion_model, resolve_model_dir
    from noisecraft.samplers.tuning import check_tunable, save_grid, tune_grid, tune_learned

    _check_seed(seed)
    check_tunable(sampler)
    try:
        counts = [int(k) for k in steps.split(",")]
    except ValueError:
        raise NoisecraftError(f"--steps must be comma-separated whole numbers, got {steps!r}") from None
    if n < 1 or min(counts) < 1 or (max_evals is not None and max_evals < 0):
        raise NoisecraftError("--n and every --steps value must be at least 1, --max-evals at least 0")
    model_dir = resolve_model_dir(model)
    net = load_diffusion_model(model_dir, device=resolve_device(device), purpose="tuning a sampler", pixel_space=True)
    for k in counts:
        bar = tqdm(desc=f"{sampler} {k} steps", disable=quiet, unit="eval", dynamic_ncols=True)
        progress = lambda i, e: (bar.update(1), bar.set_postfix(error=f"{e:.4f}"))
        coefficients = None
        if sampler == "learned":
            grid, coefficients, info = tune_learned(net, net.config.image_shape, k, n=n, seed=seed,
                                                    reference_steps=reference_steps, max_evals=max_evals, callback=progress)
        else:
            grid, info = tune_grid(net, net.config.image_shape, sampler, k, n=n, seed=seed,
                                   reference_steps=reference_steps, max_evals=max_evals, callback=progress)
        bar.close()
        path = save_grid(model_dir, sampler, k, grid, info, coefficients)
        typer.echo(f"{sampler} {k} steps: error {info['start_error']:.4f} ({info['start']}) -> {info['error']:.4f} "
                   f"(tuned), saved to {path}")


@app.command()
def forward(
    out: Path = typer.Option(..., help="Folder for forward.png and schedule.png."),
    data: str = typer.Option("digits", help="Data source to take images from."),
    image: Optional[Path] = typer.Option(None, help="Use this image file instead of --data."),
    n: int = typer.Option(4, help="Number of images (rows)."),
    t: str = typer.Option("0,50,100,200,300,500,700,999", help="Comma-separated timesteps in [0, T-1]."),
    schedule: str = typer.Option("linear", help="linear | cosine."),
    timesteps_total: int = typer.Option(1000, "--num-timesteps", help="T, the schedule length."),
    size: Optional[int] = typer.Option(None, help="Resize images to SIZE x SIZE (default: native)."),
    seed: int = typer.Option(0, help="Seed of the noise."),
):
    """Show the forward process q(x_t | x_0) destroying images, and the schedule."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from noisecraft.data import load_dataset
    from noisecraft.diffusion import NoiseSchedule, ScheduleConfig
    from noisecraft.io import atomic_write_bytes, save_png
    from noisecraft.viz import figure_png, forward_strip, from_pil, schedule_figure

    _check_seed(seed)
    try:
        ts = [int(v) for v in t.split(",") if v.strip()]
    except ValueError:
        raise NoisecraftError(f"--t must be comma-separated integers, got {t!r}") from None
    s = NoiseSchedule.from_config(ScheduleConfig(kind=schedule, num_timesteps=timesteps_total))
    if not ts or min(ts) < 0 or max(ts) >= s.num_timesteps:
        raise NoisecraftError(f"--t values must lie in [0, {s.num_timesteps - 1}], got {t!r}")
    if n < 1:
        raise NoisecraftError("--n must be at least 1")
    if image is not None:
        try:
            with Image.open(image) as img:
                img.load()
                pil = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
        except FileNotFoundError:
            raise NoisecraftError(f"--image {image} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise NoisecraftError(f"--image {image} is not a readable image ({e})") from None
        if size:
            pil = pil.resize((size, size), Image.LANCZOS)
        x0 = from_pil(pil, 1 if pil.mode == "L" else 3)[None]
    else:
        x0 = load_dataset(data, image_size=size).images[:n]
    strip = forward_strip(x0, s, [-1] + ts, generator=torch.Generator().manual_seed(seed))
    save_png(out / "forward.png", strip, {"schedule": schedule, "t": t, "seed": seed})
    others = {"linear": NoiseSchedule.linear(timesteps_total), "cosine": NoiseSchedule.cosine(timesteps_total)}
    atomic_write_bytes(out / "schedule.png", figure_png(schedule_figure(others)))
    typer.echo(f"forward process written to {out / 'forward.png'}; schedules to {out / 'schedule.png'}")


@app.command()
def data(
    name: Optional[str] = typer.Argument(None, help="A source to prepare (emoji); leave out to list the sources."),
    out: Optional[Path] = typer.Option(None, help="Where to unpack (default: $NOISECRAFT_DATA/emoji or ~/.cache/noisecraft/emoji)."),
    tarball: Optional[Path] = typer.Option(None, help="Use this `npm pack emoji-datasource-google` tarball instead of npm."),
):
    """List the data sources, or prepare one that needs a download (emoji, through npm)."""
    from noisecraft.data import describe_sources
    from noisecraft.data.emoji import unpack_emoji

    if name is None:
        for source, description in describe_sources():
            typer.echo(f"{source:16s} {description}")
        return
    if name != "emoji":
        raise NoisecraftError(f"only emoji needs preparing (the other sources load as they are): got {name!r}")
    dest, count = unpack_emoji(out, tarball)
    typer.echo(f"{count} emoji images with captions in {dest}")


@app.command()
def models():
    """List the shipped models."""
    from noisecraft.models import list_models

    for name, description in list_models():
        typer.echo(f"{name:16s} {description}")


@app.command()
def export(
    out: Path = typer.Option(..., help="Folder to create (it must not exist, or be empty)."),
    model: str = typer.Option(..., help="A shipped model name or a model directory."),
    format_: str = typer.Option("diffusers", "--format", help="diffusers: a DDPMPipeline folder (model_index.json, "
                                                             "unet/, scheduler/)."),
):
    """Write a model in another library's format: diffusers.DDPMPipeline.from_pretrained(OUT) loads it."""
    from noisecraft.interop import export_diffusers

    if format_ != "diffusers":
        raise NoisecraftError(f"unknown --format {format_!r}: use diffusers")
    path = export_diffusers(model, out)
    if (path / "pipeline.py").is_file():
        typer.echo(f"diffusers pipeline written to {path}: load it with diffusers.DiffusionPipeline.from_pretrained("
                   f"{str(path)!r}, custom_pipeline={str(path)!r}, trust_remote_code=True) (docs/interop.md)")
    else:
        typer.echo(f"diffusers pipeline written to {path}: load it with diffusers.DDPMPipeline.from_pretrained({str(path)!r})")


IMAGE = typer.Option(..., help="An image file, or a folder of images (processed in sorted order, outputs numbered so).")
TASK_OUT = typer.Option(..., help="Folder for 0000.png, 0001.png, ... and grid.png.")
TASK_MODEL = typer.Option("digits", help="A shipped model name or a model directory.")
TASK_SEED = typer.Option(0, help="Image i uses seed SEED+i.")
TASK_CLASS = typer.Option(None, "--class", help="Class index or name (class-conditional models).")
TASK_PROMPT = typer.Option(None, help="Text prompt; for a class-conditional model, one naming a class.")
TASK_NEGATIVE = typer.Option(None, help="Negative prompt: guidance steers away from it.")
TASK_GUIDANCE = typer.Option(None, help="Classifier-free guidance scale (1 = off; default: the model's).")
TASK_BATCH = typer.Option(16, help="Images per batch.")


def _read_inputs(image: Path) -> tuple[list[Path], list]:
    """The input files (one, or a folder's in sorted order) and their decoded images."""
    from noisecraft.tasks.images import list_inputs, read_image

    files = list_inputs(image)
    return files, [read_image(f) for f in files]


def _to_model(files: list[Path], pils: list, channels: int, size: int):
    """(N, channels, size, size) in [-1, 1], warning about each image that had to be resized."""
    import torch

    from noisecraft.tasks.images import to_model_image

    return torch.stack([to_model_image(p, channels, size, f.name) for f, p in zip(files, pils)])


def _run_task(run, net, images, out: Path, *, model: str, seed: int, batch_size: int, class_, prompt, negative_prompt,
              guidance, calls_per_batch: int, quiet: bool, device, files=None, meta: dict, n: int | None = None) -> None:
    """Run `run(start, batch, generators, cond, negative, guidance, callback)` over batches of `images` (start: the
    index of the batch's first image; batch None when there are no input images, only `n` to make), then write
    the PNGs (with metadata, seed SEED+i, and the input file's name when there is one) and the grid; nothing is
    written until every batch is done."""
    from tqdm import tqdm

    from noisecraft.io import save_png
    from noisecraft.tasks.batches import run_batches, task_condition
    from noisecraft.viz import make_grid, to_pil

    _check_seed(seed)
    if batch_size < 1:
        raise NoisecraftError("--batch-size must be at least 1")
    n = len(images) if images is not None else n
    tc = task_condition(net, n, class_, prompt, negative_prompt, guidance)
    meta = tc.metadata(model, meta)
    bar = tqdm(total=-(-n // batch_size) * calls_per_batch, disable=quiet, unit="step", dynamic_ncols=True)
    x = run_batches(run, images, range(seed, seed + n), tc, batch_size=batch_size, device=device,
                    callback=lambda *_: bar.update(1))
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_png(out / f"{i:04d}.png", to_pil(x[i]), meta | {"seed": seed + i} | ({"input": files[i].name} if files else {}))
    save_png(out / "grid.png", make_grid(x), meta | {"seed": f"{seed}..{seed + n - 1}"})
    typer.echo(f"{n} images written to {out}")


@app.command()
def upscale(
    image: Path = IMAGE,
    out: Path = TASK_OUT,
    model: str = TASK_MODEL,
    factor: Optional[int] = typer.Option(None, help="Upscaling factor (default: a super-resolution model's own, else "
                                                    "the model's size / the input's)."),
    method: str = typer.Option("project", help="Data consistency: project (x0 onto box-downsample = input; any "
                                                "sampler) | ilvr (low frequencies of x_t; ddpm) | none (a "
                                                "super-resolution model's own samples)."),
    sampler: str = typer.Option("ddpm", help="Sampler name (see noisecraft.SAMPLERS)."),
    steps: int = typer.Option(100, help="Solver steps."),
    seed: int = TASK_SEED,
    class_: Optional[str] = TASK_CLASS,
    prompt: Optional[str] = TASK_PROMPT,
    negative_prompt: Optional[str] = TASK_NEGATIVE,
    guidance: Optional[float] = TASK_GUIDANCE,
    batch_size: int = TASK_BATCH,
    device: str = DEVICE,
    quiet: bool = QUIET,
):
    """Super-resolution: upsample low-resolution images to the model's size, with a model trained for it
    (--cond superres) or zero-shot with any model."""
    from noisecraft.device import resolve_device
    from noisecraft.models import load_diffusion_model
    from noisecraft.samplers import plan
    from noisecraft.tasks.superres import METHODS, upscale as run_upscale

    if method not in METHODS:
        raise NoisecraftError(f"unknown --method {method!r}: use one of {', '.join(METHODS)}")
    dev = resolve_device(device)
    net = load_diffusion_model(model, device=dev, purpose="upscaling", pixel_space=True)
    size, channels = net.config.unet.image_size, net.config.unet.in_channels
    files, pils = _read_inputs(image)
    if factor is None and net.config.sr_factor:
        factor = net.config.sr_factor
    if factor is None:
        side = min(pils[0].size)
        if size % side or size // side < 2:
            raise NoisecraftError(f"cannot infer --factor from a {side}-pixel input for a {size}x{size} model: pass --factor")
        factor = size // side
    if factor < 2 or size % factor:
        raise NoisecraftError(f"--factor must be >= 2 and divide the model's size {size}, got {factor}")
    low = _to_model(files, pils, channels, size // factor)
    p = plan(net, net.schedule, sampler, steps)
    run = lambda start, x, gens, cond, negative, g, callback: run_upscale(
        net, x, factor, method=method, sampler=sampler, steps=steps, generator=gens, cond=cond, guidance_scale=g,
        negative_cond=negative, callback=callback)
    _run_task(run, net, low, out, model=model, seed=seed, batch_size=batch_size, class_=class_, prompt=prompt,
              negative_prompt=negative_prompt, guidance=guidance, calls_per_batch=p.steps, quiet=quiet, device=dev,
              files=files, meta={"task": "upscale", "factor": factor, "method": method, "sampler": p.sampler,
                                 "steps": p.steps})


@app.command()
def edit(
    image: Path = IMAGE,
    out: Path = TASK_OUT,
    model: str = TASK_MODEL,
    strength: float = typer.Option(0.5, help="How far to noise the input, 0..1: 0 returns it, 1 ignores it."),
    sampler: str = typer.Option("ddpm", help="Sampler name (see noisecraft.SAMPLERS)."),
    steps: int = typer.Option(100, help="Solver steps for a whole run from pure noise; an edit runs about STRENGTH x STEPS."),
    eta: Optional[float] = typer.Option(None, help="Noise of DDIM/ancestral steps; default: the sampler's."),
    seed: int = TASK_SEED,
    class_: Optional[str] = TASK_CLASS,
    prompt: Optional[str] = TASK_PROMPT,
    negative_prompt: Optional[str] = TASK_NEGATIVE,
    guidance: Optional[float] = TASK_GUIDANCE,
    batch_size: int = TASK_BATCH,
    device: str = DEVICE,
    quiet: bool = QUIET,
):
    """Edit images with SDEdit: noise them to --strength, then denoise (optionally towards a class or prompt)."""
    from noisecraft.device import resolve_device
    from noisecraft.models import load_diffusion_model
    from noisecraft.tasks.edit import check_strength, edit as run_edit, edit_plan

    check_strength(strength)
    dev = resolve_device(device)
    net = load_diffusion_model(model, device=dev, purpose="editing")
    p, grid = edit_plan(net, net.schedule, strength, sampler, steps, None, eta)
    files, pils = _read_inputs(image)
    channels, size = net.config.image_shape[:2]
    images = _to_model(files, pils, channels, size)
    run = lambda start, x, gens, cond, negative, g, callback: run_edit(
        net, x, strength, sampler=sampler, steps=steps, eta=eta, generator=gens, cond=cond, guidance_scale=g,
        negative_cond=negative, callback=callback)
    _run_task(run, net, images, out, model=model, seed=seed, batch_size=batch_size, class_=class_, prompt=prompt,
              negative_prompt=negative_prompt, guidance=guidance, calls_per_batch=p.fn.nfe(len(grid)) if len(grid) else 0,
              quiet=quiet, device=dev, files=files,
              meta={"task": "edit", "strength": strength, "sampler": p.sampler, "steps": p.steps, "eta": p.eta,
                    "start_t": f"{float(grid[0]):g}" if len(grid) else None})


@app.command()
def inpaint(
    image: Path = IMAGE,
    out: Path = TASK_OUT,
    model: str = TASK_MODEL,
    mask: Optional[Path] = typer.Option(None, help="Mask image of the input's size: white = fill, black = keep."),
    box: Optional[str] = typer.Option(None, help="Region to fill instead of --mask: x0,y0,x1,y1 in input pixels "
                                                 "(x1, y1 exclusive)."),
    steps: int = typer.Option(100, help="Reverse steps (respaced from the schedule's T)."),
    jump: int = typer.Option(10, help="RePaint jump length: steps between resamplings."),
    resample: int = typer.Option(1, help="RePaint resamplings of each jump (1: none; the paper's 250 steps, jump 10 "
                                         "and 10 resamplings cost 2,300 model calls)."),
    reconstruction: float = typer.Option(50.0, help="Reconstruction guidance weight w_r (Ho et al. 2022): pulls the "
                                                    "fill towards agreement with the kept pixels; 0 = replacement only."),
    seed: int = TASK_SEED,
    class_: Optional[str] = TASK_CLASS,
    prompt: Optional[str] = TASK_PROMPT,
    negative_prompt: Optional[str] = TASK_NEGATIVE,
    guidance: Optional[float] = TASK_GUIDANCE,
    batch_size: int = TASK_BATCH,
    device: str = DEVICE,
    quiet: bool = QUIET,
):
    """Inpaint: fill the white region of --mask (or --box) and keep every other pixel (RePaint's replacement with
    reconstruction guidance, optionally RePaint's resampling)."""
    import torch

    from noisecraft.device import resolve_device
    from noisecraft.models import load_diffusion_model
    from noisecraft.tasks.images import box_mask, read_mask, to_model_mask
    from noisecraft.tasks.inpaint import check_reconstruction, inpaint as run_inpaint, model_calls

    check_reconstruction(reconstruction)
    if (mask is None) == (box is None):
        raise NoisecraftError("give the region to fill as --mask M.png or as --box x0,y0,x1,y1 (one of them)")
    calls = model_calls(steps, jump, resample)
    dev = resolve_device(device)
    net = load_diffusion_model(model, device=dev, purpose="inpainting", pixel_space=True)
    size = net.config.unet.image_size
    files, pils = _read_inputs(image)
    given = read_mask(mask) if mask is not None else None
    masks = torch.stack([to_model_mask(given if given is not None else box_mask(box, *p.size), *p.size, size)
                         for p in pils])                                                     # (N, 1, H, W)
    images = _to_model(files, pils, net.config.unet.in_channels, size)
    run = lambda start, x, gens, cond, negative, g, callback: run_inpaint(
        net, x, masks[start:start + len(x)].to(x.device), steps=steps, jump=jump, resample=resample, reconstruction=reconstruction, generator=gens, cond=cond,
        guidance_scale=g, negative_cond=negative, callback=callback)
    _run_task(run, net, images, out, model=model, seed=seed, batch_size=batch_size, class_=class_, prompt=prompt,
              negative_prompt=negative_prompt, guidance=guidance, calls_per_batch=calls, quiet=quiet, device=dev,
              files=files, meta={"task": "inpaint", "mask": str(mask) if mask is not None else None, "box": box,
                                 "sampler": "repaint", "steps": steps, "jump": jump, "resample": resample,
                                 "reconstruction": reconstruction})


@app.command("eval")
def eval_(
    data: str = typer.Option(..., help="The real data to compare with: digits | fashion-mnist | faces | shapes | a folder."),
    images: Optional[Path] = typer.Option(None, help="Folder of generated images (e.g. `noisecraft sample --out`)."),
    model: Optional[str] = typer.Option(None, help="Instead of --images: sample --n images from this model and "
                                                   "evaluate them (nothing is written)."),
    n: Optional[int] = typer.Option(None, help="Images from each side (default: all in --images; 1000 with --model)."),
    split: str = typer.Option("train", help="Split of --data to compare with: train | test | all."),
    size: Optional[int] = typer.Option(None, help="Resize every image to SIZE x SIZE (needed when their sizes differ)."),
    inception_weights: Optional[Path] = typer.Option(None, help="pt_inception-2015-12-05-6726825d.pth: FID on the "
                                                                "standard Inception features, comparable with papers."),
    sampler: str = typer.Option("auto", help="With --model: the sampler (default: the best measured for --steps)."),
    steps: Optional[int] = typer.Option(None, help="With --model: solver steps (default: the sampler's own)."),
    seed: int = typer.Option(0, help="With --model: image i uses seed SEED+i."),
    batch_size: int = typer.Option(100, help="With --model: images per sampling batch."),
    domain: bool = typer.Option(True, help="Also judge digits / Fashion-MNIST images with a classifier trained on the "
                                           "real data."),
    device: str = DEVICE,
    quiet: bool = QUIET,
):
    """Measure generated images against real data: prints one JSON object (fid, kid, kid_std, precision, recall,
    n, feature_network, ...) on stdout."""
    import json

    import torch
    from tqdm import tqdm

    from noisecraft.device import resolve_device
    from noisecraft.eval.features import feature_net
    from noisecraft.eval.fid import evaluate, read_images

    _check_seed(seed)
    if (images is None) == (model is None):
        raise NoisecraftError("give the images to evaluate as --images DIR or --model M (one of them)")
    if (n is not None and n < 1) or batch_size < 1 or (size is not None and size < 1):
        raise NoisecraftError("--n, --batch-size and --size must be at least 1")
    dev = resolve_device(device)
    net = feature_net(inception_weights, dev)
    if model is not None:
        from noisecraft.models import load_diffusion_model
        from noisecraft.samplers import plan, sample as run_sampler

        gen_model = load_diffusion_model(model, device=dev, purpose="noisecraft eval --model")
        count = 1000 if n is None else n
        p = plan(gen_model, gen_model.schedule, sampler, steps)
        bar = tqdm(total=-(-count // batch_size) * p.steps, disable=quiet, unit="step", desc="sampling", dynamic_ncols=True)
        batches = []
        for start in range(0, count, batch_size):
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(min(batch_size, count - start))]
            batches.append(run_sampler(gen_model, (len(gens), *gen_model.config.image_shape), sampler=sampler,
                                       steps=steps, generator=gens, callback=lambda *_: bar.update(1)).cpu())
        bar.close()
        x = torch.cat(batches)
        if size is not None:
            from noisecraft.data.transforms import convert_tensor

            x = convert_tensor(x, size, None)
    else:
        x = read_images(images, size)
    bar = tqdm(total=0, disable=quiet, unit="img", desc="features", dynamic_ncols=True)

    def grow(k: int) -> None:
        bar.total += k
        bar.refresh()

    result = evaluate(x, data, net, split=split, n=n, domain=domain, progress=bar.update, on_total=grow,
                      log=lambda msg: tqdm.write(msg, file=sys.stderr))
    bar.close()
    for note in result["warnings"]:
        typer.echo(f"warning: {note}", err=True)
    typer.echo(json.dumps({"source": str(images) if images is not None else model, **result}))

@app.command()
def serve(
    model: list[str] = typer.Option(["digits"], help="A shipped model name, a model directory or a diffusers folder; "
                                                     "repeat to serve several (the first is the default)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; beyond loopback an API key is required."),
    port: int = typer.Option(8080, help="Port (inside Vertex AI, AIP_HTTP_PORT wins and the host is 0.0.0.0)."),
    api_key: Optional[str] = typer.Option(None, help="Require 'Authorization: Bearer KEY' (default: $NOISECRAFT_API_KEY)."),
    workers: int = typer.Option(1, help="Requests run at once (each uses every core through torch)."),
    queue_size: int = typer.Option(32, help="Requests that may wait; more are answered 503."),
    timeout: float = typer.Option(120.0, help="Seconds a request may take, waiting included; then 504."),
    max_steps: int = typer.Option(250, help="Largest number of steps a request may ask for."),
    max_batch: int = typer.Option(8, help="Most images per request."),
    ui: bool = typer.Option(True, help="Serve the web UI at /ui."),
    device: str = DEVICE,
):
    """Serve models over HTTP: a web UI at /ui, a REST API under /v1 (docs at /docs) and Vertex AI's
    /health and /predict routes."""
    from noisecraft.device import resolve_device
    from noisecraft.server import Limits, Settings, serve as run_server

    limits = Limits(max_steps=max_steps, max_batch=max_batch)
    if max_steps < 1 or max_batch < 1:
        raise NoisecraftError("--max-steps and --max-batch must be at least 1")
    settings = Settings(limits=limits, workers=workers, queue_size=queue_size, timeout_s=timeout,
                        device=str(resolve_device(device)))
    run_server(model, host=host, port=port, api_key=api_key, settings=settings, ui=ui)


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    command = typer.main.get_command(app)
    warnings.showwarning = _warn            # library warnings (e.g. skipped files) as one line, no source dump
    keep_freed_memory()                     # no page faults for every tensor a step allocates (docs/training.md)
    try:
        rc = command.main(args=argv, prog_name="noisecraft", standalone_mode=False)
    except NoisecraftError as e:
        _fail(str(e))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _fail("aborted", code=130)
    except typer.TyperException as e:  # usage errors: bad option value, missing option, unknown command
        _fail(e.format_message() if hasattr(e, "format_message") else str(e))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    sys.exit(rc if isinstance(rc, int) else 0)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    sys.exit(code)
