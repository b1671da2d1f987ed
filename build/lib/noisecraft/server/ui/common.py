"""What the UI's tabs share: running a job through the server's own queue while streaming the sampler's steps
back, the session's gallery of made images (real PNG files with their metadata), and the model choices."""
from __future__ import annotations

import base64
import os
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gradio as gr
import torch

from noisecraft.errors import NoisecraftError
from noisecraft.io import atomic_write_bytes
from noisecraft.samplers import as_images
from noisecraft.server.jobs import Item, prepare
from noisecraft.server.pool import JobTimeout, ServerBusy
from noisecraft.viz import auto_scale, to_pil

PREVIEWS = 20        # at most this many live frames per job: enough to watch, few enough not to flood the page


@dataclass
class UIContext:
    """The server's state plus a folder for the PNGs the UI shows, so that the browser can download real files."""

    state: object            # routes.ServerState
    folder: Path

    @property
    def store(self):
        return self.state.store


def big(x: torch.Tensor, target: int = 256):
    """A (C, H, W) tensor in [-1, 1] as a PIL image enlarged to about `target` pixels, for watching."""
    return to_pil(x, auto_scale(max(x.shape[-2:]), target))


def run_streaming(ctx: UIContext, task: str, options: dict, items: list[Item]) -> Iterator[tuple]:
    """Yields ("step", i, total, x_t, x0_pred) for the first image while the job runs, then ("done", results).
    Every failure becomes a gr.Error with the server's message."""
    try:
        prepared = prepare(ctx.store, ctx.state.settings.limits, task, options, items)
        events: queue.SimpleQueue = queue.SimpleQueue()
        total = max(1, prepared.steps)
        every = max(1, total // PREVIEWS)

        def preview(i, x_t, x0):
            if i % every == 0 or i == total - 1:
                x_t, x0 = as_images(prepared.served.model, x_t[:1]), as_images(prepared.served.model, x0[:1])
                events.put(("step", i, total, x_t[0].float().cpu().clone(), x0[0].float().cpu().clone()))

        job = ctx.state.pool.submit(lambda j: prepared(j, preview))
        job.future.add_done_callback(lambda _: events.put(None))
        while True:
            try:
                event = events.get(timeout=job.remaining() + 1)
            except queue.Empty:
                raise job.timed_out() from None
            if event is None:
                break
            yield event
        yield "done", ctx.state.pool.wait(job)
    except (NoisecraftError, ServerBusy, JobTimeout) as e:
        raise gr.Error(str(e)) from None


def save_results(ctx: UIContext, results: list[dict], gallery: list) -> tuple[list[str], list]:
    """Write each result's PNG (metadata included) into the UI's folder; returns the paths and the session's
    gallery with them added, newest first."""
    paths = []
    for r in results:
        meta = r["metadata"]
        name = f"{meta.get('task', 'generate')}-{meta['model']}-seed{r['seed']}-{os.urandom(4).hex()}.png"
        paths.append(str(atomic_write_bytes(ctx.folder / name, base64.b64decode(r["image"]))))
    return paths, [(p, r["metadata"]) for p, r in zip(paths, results)][::-1] + list(gallery or [])


def gallery_value(gallery: list) -> list[tuple[str, str]]:
    return [(path, f"{meta.get('task', 'generate')} · seed {meta['seed']}") for path, meta in gallery]


def optional(value):
    """Gradio's empty inputs ('' or None) as None."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def number(text, name: str, kind=float):
    """A number typed into a text box (blank: None), or a gr.Error naming the box."""
    text = optional(text)
    if text is None:
        return None
    try:
        return kind(str(text).strip())
    except ValueError:
        raise gr.Error(f"{name} must be a {'whole ' if kind is int else ''}number, got {text!r}") from None
