"""End to end: the real server on loopback, its page driven in headless Chromium (Debian's `chromium` through
Playwright). Every request the page makes must stay on the server: a request elsewhere is blocked and fails
the test, which is what "works offline" means.

With NOISECRAFT_SCREENSHOTS=DIR, test_screenshots_of_every_tab also runs every tab and saves DIR/ui-*.png
(the pictures in docs/serving.md)."""
import base64
import io
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from noisecraft.server import Settings, create_app
from tests.server.live import running

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium, or set "
                                                         "CHROMIUM=/path/to/chrome)")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def server():
    with running(create_app("digits", Settings())) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []

    def route(r):
        if r.request.url.startswith((server, "data:", "blob:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{server}/ui/")
    page.wait_for_selector("#gen-button", timeout=30_000)
    yield page
    page.close()
    assert outside == [], f"the page asked for outside resources: {outside}"


def set_field(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def generate(page, steps: int, seed: int | None) -> str:
    set_field(page, "gen-steps", steps)
    if seed is not None:
        set_field(page, "gen-seed-in", seed)
    page.click("#gen-button")
    page.wait_for_selector("#gen-result img", timeout=30_000)
    seed_box = page.locator("#gen-seed textarea, #gen-seed input").first
    page.wait_for_function("el => el.value !== ''", arg=seed_box.element_handle(), timeout=10_000)
    return seed_box.input_value()


def test_generate_shows_the_image_and_its_seed(page):
    assert generate(page, steps=6, seed=123) == "123"
    src = page.locator("#gen-result img").get_attribute("src")
    assert src and "/ui/" in src                              # served by the same server
    assert page.locator("#gen-xt img").count() == 1          # the live preview showed x_t
    assert "done: seed 123" in page.locator("#gen-status").inner_text()
    assert "123" in page.locator("#gen-meta").inner_text()                # the metadata panel too


def test_a_blank_seed_draws_one_and_shows_it(page):
    assert generate(page, steps=3, seed=None).isdigit()


def test_a_bad_option_shows_the_servers_message(page):
    set_field(page, "gen-seed-in", "abc")
    page.click("#gen-button")
    page.wait_for_selector("text=the seed must be a whole number", timeout=10_000)


def _digit_file(server: str, tmp_path: Path, size: int) -> str:
    """A digit the server draws (seed 11), box-resized to size x size, as a PNG file to upload."""
    body = json.dumps({"steps": 20, "seed": 11, "sampler": "dpmpp_2m"}).encode()
    request = urllib.request.Request(f"{server}/v1/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        png = base64.b64decode(json.load(r)["images"][0]["image"])
    path = tmp_path / f"digit{size}.png"
    Image.open(io.BytesIO(png)).resize((size, size), Image.BOX if size < 16 else Image.NEAREST).save(path)
    return str(path)


@pytest.mark.skipif(not os.environ.get("NOISECRAFT_SCREENSHOTS"), reason="set NOISECRAFT_SCREENSHOTS=DIR to write "
                                                                         "the docs' screenshots of every tab")
def test_screenshots_of_every_tab(page, server, tmp_path):
    out = Path(os.environ["NOISECRAFT_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    shot = lambda name: page.screenshot(path=str(out / f"ui-{name}.png"), full_page=True)

    generate(page, steps=20, seed=7)
    shot("generate")

    page.get_by_role("tab", name="Upscale").click()
    page.locator("#up-image input[type=file]").set_input_files(_digit_file(server, tmp_path, 8))
    set_field(page, "up-seed-in", 1)
    page.click("#up-button")
    page.wait_for_selector("#up-result img", timeout=60_000)
    shot("upscale")

    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit-image input[type=file]").set_input_files(_digit_file(server, tmp_path, 16))
    set_field(page, "edit-seed-in", 2)
    page.click("#edit-button")
    page.wait_for_selector("#edit-result img", timeout=60_000)
    shot("edit")

    page.get_by_role("tab", name="Inpaint").click()
    empty = page.locator("#inpaint-canvas").get_by_text("select the draw tool to start")
    empty.wait_for(timeout=10_000)                  # the editor is mounted and waits for an image
    page.locator("#inpaint-canvas input[type=file]").set_input_files(_digit_file(server, tmp_path, 128))
    empty.wait_for(state="hidden", timeout=20_000)  # the upload is on the canvas
    time.sleep(1)
    canvas = page.locator("#inpaint-canvas canvas").first
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=10)
    page.mouse.up()
    set_field(page, "inpaint-seed-in", 3)
    time.sleep(1)
    page.click("#inpaint-button")
    try:
        page.wait_for_selector("#inpaint-result img", timeout=60_000)
    finally:
        shot("inpaint")
    shot("inpaint")

    page.get_by_role("tab", name="Forward process").click()
    set_field(page, "fwd-t", 300)
    page.wait_for_function("() => document.querySelector('#fwd-numbers').innerText.includes('t = 300')",
                           timeout=10_000)
    shot("forward")

    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery .thumbnail-item").first.click()
    page.wait_for_function("() => document.querySelector('#gallery-meta').innerText.includes('seed')", timeout=10_000)
    shot("gallery")


def test_the_api_docs_render_offline(browser, server):
    page, outside = browser.new_page(), []
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server) else
               (outside.append(r.request.url), r.abort()))
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)      # Swagger UI drew the routes
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    page.close()
    assert {"/v1/generate", "/v1/inpaint", "/predict"} <= {p.strip() for p in paths}
    assert outside == []
