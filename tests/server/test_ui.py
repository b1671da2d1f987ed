"""The web UI's pieces that need no browser: the mask a painted canvas gives, the forward-process numbers,
typed numbers, and the mounting (with the API key as the UI's password)."""
import gradio as gr
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from noisecraft.server import Settings, create_app
from noisecraft.server.ui.common import number
from noisecraft.server.ui.forward import noised
from noisecraft.server.ui.image_tasks import painted_mask
from tests.server.conftest import wait_ready


def test_the_mask_is_where_the_brush_painted():
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 10:20] = (255, 0, 255, 255)
    image, mask = painted_mask({"background": Image.new("RGB", (30, 20)), "layers": [Image.fromarray(layer, "RGBA")]})
    m = np.asarray(mask)
    assert image.size == mask.size == (30, 20) and mask.mode == "L"
    assert (m[5:10, 10:20] == 255).all() and m.sum() == 255 * 50


@pytest.mark.parametrize("value, match", [(None, "upload an image"), ({"background": Image.new("RGB", (4, 4)),
                                                                      "layers": []}, "paint the region")])
def test_an_empty_canvas_says_what_to_do(value, match):
    with pytest.raises(gr.Error, match=match):
        painted_mask(value)


@pytest.mark.parametrize("text, kind, expected", [("", int, None), (" 12 ", int, 12), ("2.5", float, 2.5)])
def test_numbers_typed_in_boxes(text, kind, expected):
    assert number(text, "x", kind) == expected


def test_a_bad_number_names_its_box():
    with pytest.raises(gr.Error, match="the seed must be a whole number"):
        number("1.5", "the seed", int)


@pytest.fixture(scope="module")
def ui_app():
    app = create_app("digits", Settings(api_key="k3y"))
    with TestClient(app) as c:
        wait_ready(c)
        yield app, c


def test_forward_process_numbers_follow_the_schedule(ui_app):
    app, _ = ui_app
    from noisecraft.server.ui.common import UIContext
    ctx = UIContext(app.state.noisecraft, None)
    x0, x_t, numbers, plot = noised(ctx, "digits", None, 500, 0)
    ab = float(app.state.noisecraft.store.get().model.schedule.alphas_cumprod[500])
    assert f"SNR = {ab / (1 - ab):.4g}" in numbers and x_t.size == x0.size and plot.size[0] > 100
    clean, _, first, _ = noised(ctx, "digits", None, 0, 0)
    assert np.abs(np.asarray(clean, float) - np.asarray(noised(ctx, "digits", None, 0, 0)[1], float)).mean() < 10
    assert "t = 0 of 999" in first


def test_the_ui_is_mounted_and_asks_for_the_key(ui_app):
    _, c = ui_app
    assert c.get("/", follow_redirects=False).headers["location"] == "/ui/"
    page = c.get("/ui/")
    assert page.status_code == 200 and "fonts.googleapis" not in page.text
    assert c.post("/ui/login", data={"username": "me", "password": "wrong"}).status_code == 400
    assert c.post("/ui/login", data={"username": "me", "password": "k3y"}).status_code == 200
