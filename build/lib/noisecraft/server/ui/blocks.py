"""The tabs put together, and mounted under /ui."""
from __future__ import annotations

import secrets

import gradio as gr
from fastapi import FastAPI

from noisecraft.server.ui import forward, gallery, generate, image_tasks
from noisecraft.server.ui.common import UIContext

# Small models make 8x16 px images: show them large and sharp rather than tiny or blurred.
CSS = """
img { image-rendering: pixelated; }
#gen-result img, #up-result img, #edit-result img, #inpaint-result img, #gen-xt img, #gen-x0 img, #fwd-xt img,
#up-image img, #edit-image img { width: 100%; height: 100%; object-fit: contain; }
"""
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]
PATH = "/ui"


def build_ui(ctx: UIContext) -> gr.Blocks:
    with gr.Blocks(title="noisecraft", analytics_enabled=False) as demo:
        gr.Markdown("# noisecraft\nDiffusion models on this server: generate, upscale, edit, inpaint, and watch "
                    "the forward process. Programs use the REST API (see [/docs](/docs)).")
        gallery_state = gr.State([])
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                model, refresh, targets = generate.build(ctx, gallery_state)
            with gr.Tab("Upscale", id="upscale"):
                image_tasks.build_upscale(ctx, gallery_state)
            with gr.Tab("Edit", id="edit"):
                image_tasks.build_edit(ctx, gallery_state)
            with gr.Tab("Inpaint", id="inpaint"):
                image_tasks.build_inpaint(ctx, gallery_state)
            with gr.Tab("Forward process", id="forward"):
                update, inputs, outputs = forward.build(ctx)
            with gr.Tab("Gallery", id="gallery"):
                gallery.build(gallery_state)
        # The models load after the page is built: fill in what depends on them when a browser opens it.
        demo.load(refresh, model, targets).then(update, inputs, outputs)
    return demo


def mount_ui(app: FastAPI, ctx: UIContext, api_key: str | None) -> None:
    """Mount the UI at /ui; with an API key the page asks for it (any user name, the key as password)."""
    auth = (lambda _user, password: secrets.compare_digest(password.encode(), api_key.encode())) if api_key else None
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    gr.mount_gradio_app(app, build_ui(ctx), path=PATH, auth=auth, auth_message="Log in with the server's API key as "
                        "password (any user name).", theme=theme, css=CSS, footer_links=[], pwa=False,
                        allowed_paths=[str(ctx.folder)], ssr_mode=False, run_history=False, mcp_server=False)
