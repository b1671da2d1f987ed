"""The Upscale, Edit and Inpaint tabs: an input image (for Inpaint, a canvas to paint the region to fill), the
task's options, and the result with its seed and metadata. They go through the same checks and queue as the API."""
from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from noisecraft.samplers import SAMPLERS
from noisecraft.server.codec import pil_to_b64
from noisecraft.server.jobs import Item
from noisecraft.server.ui.common import UIContext, big, number, optional, run_streaming, save_results
from noisecraft.tasks.inpaint import DEFAULT_JUMP, DEFAULT_RECONSTRUCTION, DEFAULT_RESAMPLE, DEFAULT_STEPS
from noisecraft.tasks.superres import METHODS


def _common(ctx: UIContext, prefix: str):
    """Model, prompt/class, seed and guidance inputs every image task has."""
    model = gr.Dropdown(list(ctx.store.specs), value=ctx.store.default, label="Model", elem_id=f"{prefix}-model")
    prompt = gr.Textbox(label="Prompt or class (optional)", placeholder="conditional models: a prompt or class name")
    with gr.Row():
        seed = gr.Textbox(label="Seed", placeholder="blank: random", elem_id=f"{prefix}-seed-in")
        guidance = gr.Textbox(label="Guidance", placeholder="blank: the model's")
    return model, prompt, seed, guidance


def _outputs(prefix: str):
    status = gr.Markdown("", elem_id=f"{prefix}-status")
    with gr.Row():
        x0 = gr.Image(label="predicted x_0 (live)", type="pil", format="png", height=256, interactive=False)
        result = gr.Image(label="Result (PNG with metadata)", type="filepath", format="png", height=256,
                          interactive=False, elem_id=f"{prefix}-result")
    seed = gr.Textbox(label="Seed of the result", interactive=False, elem_id=f"{prefix}-seed")
    meta = gr.JSON(label="Metadata")
    return status, x0, result, seed, meta


def _runner(ctx: UIContext, task: str, gallery_state, outputs):
    status, x0, result, seed_out, meta = outputs

    def run(options: dict, item: Item, gallery: list):
        for event in run_streaming(ctx, task, options, [item]):
            if event[0] == "step":
                _, i, total, _, x0_now = event
                yield {x0: big(x0_now), status: f"step {i + 1} of {total}"}
            else:
                results = event[1]
                paths, gallery = save_results(ctx, results, gallery)
                r = results[0]
                yield {result: paths[0], seed_out: str(r["seed"]), meta: r["metadata"], gallery_state: gallery,
                       status: f"done: seed {r['seed']}"}
    return run


def _seed(value):
    return number(value, "the seed", int)


def _need(image, what: str = "an image"):
    if image is None:
        raise gr.Error(f"upload {what} first")
    return image


def build_upscale(ctx: UIContext, gallery_state: gr.State) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label="Low-resolution image", type="pil", image_mode=None, height=200,
                             sources=["upload", "clipboard"], elem_id="up-image")
            model, prompt, seed, guidance = _common(ctx, "up")
            factor = gr.Textbox(label="Factor", placeholder="blank: the model's own, or its size / the input's")
            method = gr.Dropdown(list(METHODS), value="project", label="Consistency method")
            sampler = gr.Dropdown(list(SAMPLERS), value="ddpm", label="Sampler")
            steps = gr.Slider(1, ctx.state.settings.limits.max_steps, value=50, step=1, label="Steps")
            button = gr.Button("Upscale", variant="primary", elem_id="up-button")
        with gr.Column(scale=2):
            outputs = _outputs("up")
    run = _runner(ctx, "upscale", gallery_state, outputs)

    def go(image, model, prompt, seed, guidance, factor, method, sampler, steps, gallery):
        options = {"model": model, "seed": _seed(seed), "guidance": number(guidance, "the guidance"),
                   "factor": number(factor, "the factor", int), "method": method,
                   "sampler": sampler, "steps": int(steps)}
        yield from run(options, Item(prompt=optional(prompt), image=pil_to_b64(_need(image))), gallery)

    button.click(go, [image, model, prompt, seed, guidance, factor, method, sampler, steps, gallery_state],
                 [*outputs, gallery_state], concurrency_limit=None)


def build_edit(ctx: UIContext, gallery_state: gr.State) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label="Image to edit", type="pil", image_mode=None, height=200,
                             sources=["upload", "clipboard"], elem_id="edit-image")
            model, prompt, seed, guidance = _common(ctx, "edit")
            strength = gr.Slider(0, 1, value=0.5, step=0.05, label="Strength (0 keeps the input, 1 ignores it)")
            sampler = gr.Dropdown(list(SAMPLERS), value="ddpm", label="Sampler")
            steps = gr.Slider(1, ctx.state.settings.limits.max_steps, value=50, step=1,
                              label="Steps (for a whole run; an edit runs about strength x steps)")
            button = gr.Button("Edit", variant="primary", elem_id="edit-button")
        with gr.Column(scale=2):
            outputs = _outputs("edit")
    run = _runner(ctx, "edit", gallery_state, outputs)

    def go(image, model, prompt, seed, guidance, strength, sampler, steps, gallery):
        options = {"model": model, "seed": _seed(seed), "guidance": number(guidance, "the guidance"), "strength": float(strength),
                   "sampler": sampler, "steps": int(steps)}
        yield from run(options, Item(prompt=optional(prompt), image=pil_to_b64(_need(image))), gallery)

    button.click(go, [image, model, prompt, seed, guidance, strength, sampler, steps, gallery_state],
                 [*outputs, gallery_state], concurrency_limit=None)


def painted_mask(value: dict | None) -> tuple[Image.Image, Image.Image]:
    """(the image, the mask: white where the user painted) from the canvas's background and layers."""
    background = _need((value or {}).get("background"), "an image onto the canvas")
    size = background.size
    mask = np.zeros((size[1], size[0]), bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA").resize(size, Image.NEAREST))[..., 3]
        mask |= alpha > 0
    if not mask.any():
        raise gr.Error("paint the region to fill with the brush first (white = fill)")
    return background, Image.fromarray(mask.astype(np.uint8) * 255, "L")


def build_inpaint(ctx: UIContext, gallery_state: gr.State) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            canvas = gr.ImageEditor(label="Upload an image, then paint the region to fill", type="pil",
                                    image_mode="RGBA", sources=["upload", "clipboard"], transforms=(), layers=False,
                                    brush=gr.Brush(colors=["#ff00ff"], default_color="#ff00ff", color_mode="fixed"),
                                    height=360, elem_id="inpaint-canvas")
            model, prompt, seed, guidance = _common(ctx, "inpaint")
            steps = gr.Slider(1, ctx.state.settings.limits.max_steps, step=1, label="Reverse steps",
                              value=min(DEFAULT_STEPS, ctx.state.settings.limits.max_steps))
            reconstruction = gr.Slider(0, 200, value=DEFAULT_RECONSTRUCTION, step=5,
                                       label="Reconstruction guidance (0: replacement only)")
            with gr.Row():
                jump = gr.Slider(1, 20, value=DEFAULT_JUMP, step=1, label="Jump length")
                resample = gr.Slider(1, 10, value=DEFAULT_RESAMPLE, step=1, label="Resamplings (1: none)")
            button = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
        with gr.Column(scale=2):
            mask_view = gr.Image(label="Mask sent (white = fill)", type="pil", height=160, interactive=False)
            outputs = _outputs("inpaint")
    run = _runner(ctx, "inpaint", gallery_state, outputs)

    def go(value, model, prompt, seed, guidance, steps, reconstruction, jump, resample, gallery):
        image, mask = painted_mask(value)
        yield {mask_view: mask}
        options = {"model": model, "seed": _seed(seed), "guidance": number(guidance, "the guidance"), "steps": int(steps),
                   "reconstruction": float(reconstruction), "jump": int(jump), "resample": int(resample)}
        yield from run(options, Item(prompt=optional(prompt), image=pil_to_b64(image), mask=pil_to_b64(mask)),
                       gallery)

    button.click(go, [canvas, model, prompt, seed, guidance, steps, reconstruction, jump, resample, gallery_state],
                 [*outputs, gallery_state, mask_view], concurrency_limit=None)
