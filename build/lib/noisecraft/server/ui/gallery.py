"""The Gallery tab: every image this browser session made, newest first; selecting one shows its metadata
(the same as in its PNG's text chunks, which a download keeps)."""
from __future__ import annotations

import gradio as gr

from noisecraft.server.ui.common import gallery_value


def build(gallery_state: gr.State) -> None:
    gr.Markdown("Images made in this session. Select one to see how to make it again; download keeps the metadata.")
    with gr.Row():
        gallery = gr.Gallery(label="Gallery", columns=6, height=420, format="png", elem_id="gallery",
                             object_fit="contain", allow_preview=False)
        meta = gr.JSON(label="Metadata of the selected image", elem_id="gallery-meta")

    def select(gallery_items: list, event: gr.SelectData):
        return gallery_items[event.index][1] if 0 <= event.index < len(gallery_items) else {}

    gallery_state.change(gallery_value, gallery_state, gallery)
    gallery.select(select, gallery_state, meta)
