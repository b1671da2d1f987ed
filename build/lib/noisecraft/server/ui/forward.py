"""The Forward process tab: an image and a slider over t show x_t ~ q(x_t | x_0) (DDPM eq. 4) under the
model's own schedule, with one fixed noise draw so that moving the slider shows the signal fading, not new
noise, and the signal-to-noise ratio alpha_bar / (1 - alpha_bar) at t."""
from __future__ import annotations

import io

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw

from noisecraft.data.transforms import flatten_pil, resize_square_pil
from noisecraft.diffusion import q_sample
from noisecraft.server.ui.common import UIContext, big
from noisecraft.viz import from_pil


def test_card(size: int = 64) -> Image.Image:
    """A default x_0 with edges and flat areas of several tones, so the noise visibly eats the edges first."""
    img = Image.new("RGB", (size, size), (30, 60, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse((size * 0.1, size * 0.1, size * 0.6, size * 0.6), fill=(240, 200, 40))
    draw.rectangle((size * 0.45, size * 0.5, size * 0.9, size * 0.9), fill=(220, 60, 60))
    return img


def snr_plot(schedule, t: int) -> Image.Image:
    """log SNR against t for the schedule, with t marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ab = schedule.alphas_cumprod.numpy()
    fig, ax = plt.subplots(figsize=(4.8, 2.6))
    ax.semilogy(np.arange(len(ab)), ab / (1 - ab))
    ax.axvline(t, color="tab:red")
    ax.set(xlabel="t", ylabel="SNR", title=f"SNR at t={t}: {ab[t] / (1 - ab[t]):.3g}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue()))


def noised(ctx: UIContext, model: str, image: Image.Image | None, t: int, seed: int):
    """(x_t enlarged, the numbers at t, the SNR plot) for `image` brought to the model's size and channels."""
    if not ctx.store.ready:
        raise gr.Error("the models are still loading: try again in a moment")
    served = ctx.store.get(model)
    (channels, size, _), schedule = served.config.image_shape, served.model.schedule
    t = int(min(max(t, 0), schedule.num_timesteps - 1))
    x0 = from_pil(resize_square_pil(flatten_pil(image or test_card(), channels), size), channels)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(seed or 0)))
    x_t = q_sample(schedule, x0[None].double(), torch.tensor([float(t)]), noise[None].double())[0]
    ab = float(schedule.alphas_cumprod[t])
    numbers = (f"t = {t} of {schedule.num_timesteps - 1} · alpha_bar = {ab:.4g} · SNR = {ab / (1 - ab):.4g} · "
               f"log SNR = {np.log(ab / (1 - ab)):.3f} · sigma = {float(schedule.sigmas[t]):.4g}")
    return big(x0), big(x_t), numbers, snr_plot(schedule, t)


def build(ctx: UIContext) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(list(ctx.store.specs), value=ctx.store.default, label="Model (its schedule)",
                                elem_id="fwd-model")
            image = gr.Image(test_card(), label="x_0 (upload your own)", type="pil", image_mode=None, height=200,
                             sources=["upload", "clipboard"])
            t = gr.Slider(0, 999, value=250, step=1, label="t", elem_id="fwd-t")
            seed = gr.Number(0, precision=0, minimum=0, label="Noise seed")
        with gr.Column(scale=2):
            numbers = gr.Markdown(elem_id="fwd-numbers")
            with gr.Row():
                x0_view = gr.Image(label="x_0 at the model's size", type="pil", height=256, interactive=False)
                xt_view = gr.Image(label="x_t", type="pil", height=256, interactive=False, elem_id="fwd-xt")
            plot = gr.Image(label="signal-to-noise ratio", type="pil", interactive=False, elem_id="fwd-plot")

    def update(model, image, t, seed):
        return noised(ctx, model, image, t, seed)

    def retime(model):
        steps = ctx.store.get(model).model.schedule.num_timesteps if ctx.store.ready else 1000
        return gr.update(maximum=steps - 1)

    inputs, outputs = [model, image, t, seed], [x0_view, xt_view, numbers, plot]
    for event in (t.change, image.change, seed.change):       # cheap: follow the slider as it moves
        event(update, inputs, outputs, show_progress="hidden", trigger_mode="always_last")
    model.change(retime, model, t).then(update, inputs, outputs)
    return update, inputs, outputs
