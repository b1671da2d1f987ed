"""The Generate tab: model, prompt or class, sampler, steps, seed, guidance; while it samples, x_t and the
model's current estimate of x_0 are shown live (the samplers call back after every step)."""
from __future__ import annotations

import gradio as gr

from noisecraft.samplers import SAMPLERS
from noisecraft.server.jobs import Item
from noisecraft.server.ui.common import UIContext, big, number, optional, run_streaming, save_results


def model_controls(ctx: UIContext, name: str | None):
    """Updates for the class dropdown and the guidance box that fit model `name`."""
    if not ctx.store.ready:
        raise gr.Error("the models are still loading: try again in a moment")
    info = ctx.store.get(name).describe()
    classes = info["classes"] or []
    return (gr.update(choices=[""] + classes, value="", visible=bool(classes)),
            gr.update(placeholder=f"the model's own ({info['guidance']:g})" if info["cond"] != "none"
                      else "1 (this model is unconditional)"),
            f"**{info['name']}**: {info['description'] or 'no description'} · {info['channels']}x"
            f"{info['image_size']}x{info['image_size']} · condition: {info['cond']}")


def build(ctx: UIContext, gallery_state: gr.State):
    names = list(ctx.store.specs)
    limits = ctx.state.settings.limits
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(names, value=ctx.store.default, label="Model", elem_id="gen-model")
            about = gr.Markdown()
            prompt = gr.Textbox(label="Prompt", placeholder="empty: unconditional (a class model takes a prompt "
                                "naming a class)", elem_id="gen-prompt")
            class_ = gr.Dropdown([""], value="", label="Class", visible=False, elem_id="gen-class")
            negative = gr.Textbox(label="Negative prompt", placeholder="optional: guidance steers away from it")
            sampler = gr.Dropdown(["auto", *SAMPLERS], value="dpmpp_2m", label="Sampler", elem_id="gen-sampler")
            steps = gr.Slider(1, min(100, limits.max_steps), value=20, step=1, label="Steps", elem_id="gen-steps")
            with gr.Row():
                seed = gr.Textbox(label="Seed", placeholder="blank: random", elem_id="gen-seed-in")
                guidance = gr.Textbox(label="Guidance", elem_id="gen-guidance")
            button = gr.Button("Generate", variant="primary", elem_id="gen-button")
        with gr.Column(scale=2):
            status = gr.Markdown("Press Generate: the reverse process runs live below.", elem_id="gen-status")
            with gr.Row():
                x_t = gr.Image(label="x_t (live)", type="pil", format="png", height=256, interactive=False,
                               elem_id="gen-xt")
                x0 = gr.Image(label="predicted x_0 (live)", type="pil", format="png", height=256, interactive=False,
                              elem_id="gen-x0")
                result = gr.Image(label="Result (PNG with metadata)", type="filepath", format="png", height=256,
                                  interactive=False, elem_id="gen-result")
            seed_out = gr.Textbox(label="Seed of the result", interactive=False, elem_id="gen-seed")
            meta = gr.JSON(label="Metadata (also in the PNG's text chunks)", elem_id="gen-meta")

    def run(model, prompt, class_, negative, sampler, steps, seed, guidance, gallery):
        options = {"model": model, "sampler": sampler, "steps": int(steps), "seed": number(seed, "the seed", int),
                   "guidance": number(guidance, "the guidance")}
        item = Item(class_=optional(class_), prompt=optional(prompt), negative_prompt=optional(negative))
        for event in run_streaming(ctx, "generate", options, [item]):
            if event[0] == "step":
                _, i, total, xt_now, x0_now = event
                yield {x_t: big(xt_now), x0: big(x0_now), status: f"step {i + 1} of {total}"}
            else:
                results = event[1]
                paths, gallery = save_results(ctx, results, gallery)
                r = results[0]
                yield {result: paths[0], seed_out: str(r["seed"]), meta: r["metadata"], gallery_state: gallery,
                       status: f"done: seed {r['seed']}, {r['metadata']['sampler']} with {r['metadata']['steps']} steps"}

    button.click(run, [model, prompt, class_, negative, sampler, steps, seed, guidance, gallery_state],
                 [x_t, x0, result, seed_out, meta, gallery_state, status], concurrency_limit=None)
    model.change(lambda name: model_controls(ctx, name), model, [class_, guidance, about])
    return model, lambda name: model_controls(ctx, name), [class_, guidance, about]
