"""Every route through FastAPI's TestClient, and every kind of bad input answered 4xx with a JSON error.
The client re-raises any exception the server does not handle, so a 500 for user input fails these tests."""
import base64

import numpy as np
import pytest
import torch

from noisecraft import load_model, sample
from tests.server.conftest import LIMITS, decode, png_b64


def error(r, status: int, match: str) -> None:
    assert r.status_code == status, r.text
    assert match in r.json()["error"], r.json()


# ------------------------------------------------------------------------------------------------ generate

def test_generate_returns_pngs_with_seeds_and_metadata(client):
    r = client.post("/v1/generate", json={"n": 3, "steps": 5, "seed": 11, "sampler": "ddim"})
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert [i["seed"] for i in images] == [11, 12, 13]
    png = decode(images[2]["image"])
    assert png.size == (16, 16) and png.mode == "L"
    assert png.text["seed"] == "13" and png.text["sampler"] == "ddim" and png.text["model"] == "digits"
    assert images[2]["metadata"]["steps"] == 5


def test_generate_is_the_library_sample_for_the_same_seed(client):
    """Image i is reproducible on its own: the server's is exactly noisecraft.sample's for seed S+i."""
    r = client.post("/v1/generate", json={"n": 2, "steps": 6, "seed": 40, "sampler": "dpmpp_2m"})
    ours = np.stack([np.asarray(decode(i["image"])) for i in r.json()["images"]])
    model = load_model("digits")
    x = sample(model, (1, 1, 16, 16), sampler="dpmpp_2m", steps=6, generator=[torch.Generator().manual_seed(41)])
    ref = ((x[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(ours[1], ref)
    assert not np.array_equal(ours[0], ours[1])


def test_generate_without_a_seed_draws_one_and_reports_it(client):
    a, b = (client.post("/v1/generate", json={"steps": 3}).json()["images"][0] for _ in range(2))
    assert a["seed"] != b["seed"] and int(decode(a["image"]).text["seed"]) == a["seed"]


@pytest.mark.parametrize("class_, label", [(3, "3"), ("7", "7")])
def test_generate_a_class(client, class_, label):
    r = client.post("/v1/generate", json={"model": "tiny-class", "class": class_, "steps": 3, "seed": 0})
    meta = r.json()["images"][0]["metadata"]
    assert meta["class"] == label and meta["guidance"] == 3.0 and meta["model"] == "tiny-class"


def test_generate_with_a_prompt_naming_a_class_and_a_guidance(client):
    r = client.post("/v1/generate", json={"model": "tiny-class", "prompt": "a handwritten 5", "guidance": 1.5,
                                          "steps": 3, "seed": 0})
    meta = r.json()["images"][0]["metadata"]
    assert meta["class"] == "5" and meta["guidance"] == 1.5 and meta["prompt"] == "a handwritten 5"


def test_a_diffusers_folder_is_served(client):
    names = [m["name"] for m in client.get("/v1/models").json()["models"]]
    assert "tiny-unet" in names
    r = client.post("/v1/generate", json={"model": "tiny-unet", "steps": 3, "seed": 1})
    png = decode(r.json()["images"][0]["image"])
    assert png.size == (8, 8) and png.mode == "RGB"


# ------------------------------------------------------------------------------------------------ bad input

BAD_GENERATE = {
    "unknown sampler": ({"sampler": "plms"}, 422, "unknown sampler 'plms'"),
    "too many steps": ({"steps": LIMITS.max_steps + 1}, 422, "above this server's limit"),
    "zero steps": ({"steps": 0}, 422, "steps"),
    "steps not a number": ({"steps": "many"}, 422, "steps"),
    "too many images": ({"n": LIMITS.max_batch + 1}, 422, f"1 to {LIMITS.max_batch}"),
    "negative seed": ({"seed": -1}, 422, "seed"),
    "seed too large": ({"seed": 2 ** 64}, 422, "seed"),
    "class for an unconditional model": ({"class": 3}, 422, "unconditional"),
    "prompt for an unconditional model": ({"prompt": "a cat"}, 422, "unconditional"),
    "unknown spacing": ({"spacing": "zigzag", "sampler": "ddim"}, 422, "unknown spacing"),
    "negative eta": ({"eta": -1}, 422, "eta"),
    "guidance out of range": ({"guidance": 1e9}, 422, "guidance"),
    "misspelt field": ({"stpes": 5}, 422, "stpes"),
    "unknown model": ({"model": "../../etc"}, 404, "unknown model"),
    "input image for generate": ({"image": "aGk="}, 422, "image"),
}


@pytest.mark.parametrize("body, status, match", BAD_GENERATE.values(), ids=BAD_GENERATE.keys())
def test_bad_generate_requests_are_4xx(client, body, status, match):
    error(client.post("/v1/generate", json=body), status, match)


@pytest.mark.parametrize("body, match", [({"model": "tiny-class", "class": "eleven"}, "unknown class 'eleven'"),
                                         ({"model": "tiny-class", "class": 10}, "unknown class 10"),
                                         ({"model": "tiny-class", "class": 3, "prompt": "a 4"}, "not both"),
                                         ({"model": "tiny-class", "prompt": "a zebra"}, "must name")])
def test_bad_class_or_prompt_is_422(client, body, match):
    error(client.post("/v1/generate", json=body | {"steps": 2}), 422, match)


def test_nan_guidance_is_refused(client):
    r = client.post("/v1/generate", content=b'{"guidance": NaN, "steps": 2}', headers={"content-type": "application/json"})
    error(r, 422, "guidance")


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2", b"{'steps': 3}", "{\"steps\": 3}".encode("utf-16")[:-2]])
def test_malformed_json_is_400(client, content):
    error(client.post("/v1/generate", content=content, headers={"content-type": "application/json"}), 400, "JSON")


def test_an_empty_body_is_422(client):
    error(client.post("/v1/generate", content=b"", headers={"content-type": "application/json"}), 422, "no body")


def test_a_body_that_is_not_an_object_is_422(client):
    error(client.post("/v1/generate", json=[1, 2]), 422, "")


def test_unknown_route_and_wrong_method_are_json(client):
    error(client.get("/v1/nothing"), 404, "no route /v1/nothing")
    error(client.get("/v1/generate"), 405, "Method Not Allowed")


# ------------------------------------------------------------------------------------------------ image tasks

def test_upscale_doubles_and_stays_consistent(client, digit):
    low = digit.reshape(8, 2, 8, 2).mean((1, 3)).round()
    r = client.post("/v1/upscale", json={"image": png_b64(low), "steps": 10, "seed": 0, "sampler": "ddim"})
    assert r.status_code == 200, r.text
    result = r.json()["images"][0]
    up = np.asarray(decode(result["image"]), dtype=float)
    assert up.shape == (16, 16) and result["metadata"]["factor"] == 2 and result["metadata"]["task"] == "upscale"
    assert np.abs(up.reshape(8, 2, 8, 2).mean((1, 3)) - low).max() <= 1.0       # box-downsampling gives the input


@pytest.mark.parametrize("body, match", [({"factor": 3}, "x3"), ({"factor": 64}, "larger than the model's"),
                                         ({"factor": 2 ** 40}, "larger than the model's"), ({"method": "magic"}, "unknown method"),
                                         ({"method": "ilvr", "sampler": "ddim"}, "ILVR"),
                                         ({"strength": 0.5}, "strength: Extra inputs are not permitted")])
def test_bad_upscale_options_are_422(client, digit, body, match):
    low = digit.reshape(8, 2, 8, 2).mean((1, 3))
    error(client.post("/v1/upscale", json={"image": png_b64(low), "steps": 3} | body), 422, match)


def test_upscale_of_an_input_that_does_not_divide_the_model_size_is_422(client):
    error(client.post("/v1/upscale", json={"image": png_b64(np.zeros((5, 5))), "steps": 3}), 422, "factor")


def test_edit_at_strength_zero_returns_the_input(client, digit):
    r = client.post("/v1/edit", json={"image": png_b64(digit), "strength": 0, "seed": 3})
    np.testing.assert_array_equal(np.asarray(decode(r.json()["images"][0]["image"])), digit)


def test_edit_at_some_strength_changes_the_image(client, digit):
    r = client.post("/v1/edit", json={"image": png_b64(digit), "strength": 0.6, "steps": 10, "seed": 3,
                                      "sampler": "ddim"})
    meta = r.json()["images"][0]["metadata"]
    assert meta["strength"] == 0.6 and meta["task"] == "edit" and float(meta["start_t"]) <= 0.6 * 999


def test_edit_converts_an_rgb_input_of_another_size(client):
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3))
    r = client.post("/v1/edit", json={"image": png_b64(rgb, "RGB"), "strength": 0.3, "steps": 4, "seed": 0})
    assert decode(r.json()["images"][0]["image"]).size == (16, 16)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_edit_strength_out_of_range_is_422(client, digit, strength):
    error(client.post("/v1/edit", json={"image": png_b64(digit), "strength": strength}), 422, "strength")


def test_inpaint_keeps_the_unmasked_pixels(client, digit):
    mask = np.zeros((16, 16))
    mask[4:12, 4:12] = 255
    r = client.post("/v1/inpaint", json={"image": png_b64(digit), "mask": png_b64(mask), "steps": 10, "jump": 5,
                                         "resample": 2, "seed": 0})
    assert r.status_code == 200, r.text
    out = np.asarray(decode(r.json()["images"][0]["image"]))
    keep = mask == 0
    np.testing.assert_array_equal(out[keep], digit[keep])
    assert r.json()["images"][0]["metadata"]["sampler"] == "repaint"


def test_inpaint_with_a_box(client, digit):
    r = client.post("/v1/inpaint", json={"image": png_b64(digit), "box": "0,0,8,16", "steps": 6, "jump": 3,
                                         "resample": 1, "seed": 0})
    out = np.asarray(decode(r.json()["images"][0]["image"]))
    np.testing.assert_array_equal(out[:, 8:], digit[:, 8:])
    assert r.json()["images"][0]["metadata"]["reconstruction"] == 50.0                 # the library's default
    r = client.post("/v1/inpaint", json={"image": png_b64(digit), "box": "0,0,8,16", "steps": 6, "reconstruction": 0,
                                         "seed": 0})
    assert r.status_code == 200 and r.json()["images"][0]["metadata"]["reconstruction"] == 0.0


BAD_INPAINT = {
    "mask of another size": ({"mask": png_b64(np.full((8, 8), 255))}, "the mask is 8x8 but the image is 16x16"),
    "empty mask": ({"mask": png_b64(np.zeros((16, 16)))}, "selects no pixels"),
    "empty mask string": ({"mask": ""}, "the mask is empty"),
    "empty box string": ({"box": ""}, "four whole numbers"),
    "mask not an image": ({"mask": base64.b64encode(b"not a png").decode()}, "not an image"),
    "neither mask nor box": ({}, "one of them"),
    "both mask and box": ({"mask": png_b64(np.full((16, 16), 255)), "box": "0,0,4,4"}, "one of them"),
    "box outside the image": ({"box": "0,0,40,4"}, "does not fit"),
    "box not numbers": ({"box": "a,b,c,d"}, "four whole numbers"),
    "negative reconstruction weight": ({"box": "0,0,4,4", "reconstruction": -1}, "reconstruction"),
    "too many model calls": ({"box": "0,0,4,4", "steps": 50, "jump": 10, "resample": 10}, "model calls"),
}


@pytest.mark.parametrize("body, match", BAD_INPAINT.values(), ids=BAD_INPAINT.keys())
def test_bad_inpaint_requests_are_422(client, digit, body, match):
    error(client.post("/v1/inpaint", json={"image": png_b64(digit), "steps": 4, "jump": 2, "resample": 1} | body),
          422, match)


BAD_IMAGES = {
    "not base64": ("@@@ not base64 @@@", "not valid base64"),
    "base64 of text": (base64.b64encode(b"hello, world").decode(), "not an image"),
    "truncated png": (png_b64(np.zeros((16, 16)))[:60], "not"),
    "empty": ("", "empty"),
    "too large": (png_b64(np.zeros((LIMITS.max_image_side + 1, 4))), "at most 64 pixels"),
}


@pytest.mark.parametrize("route", ["upscale", "edit", "inpaint"])
@pytest.mark.parametrize("image, match", BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_bad_images_are_422(client, route, image, match):
    error(client.post(f"/v1/{route}", json={"image": image, "box": "0,0,2,2"} if route == "inpaint" else
                      {"image": image}), 422, match)


def test_a_data_url_image_is_accepted(client, digit):
    r = client.post("/v1/edit", json={"image": "data:image/png;base64," + png_b64(digit), "strength": 0})
    assert r.status_code == 200, r.text


def test_missing_image_is_422(client):
    error(client.post("/v1/edit", json={"strength": 0.5}), 422, "image: Field required")


def test_a_body_over_the_limit_is_413(client):
    big = {"image": "A" * (LIMITS.max_body_bytes + 10)}
    error(client.post("/v1/edit", json=big), 413, "over this server's limit")


def test_a_chunked_body_over_the_limit_is_413(client):
    chunks = (b'{"image": "' + b"A" * 50_000 for _ in range(8))                  # no Content-Length: chunked
    error(client.post("/v1/edit", content=chunks, headers={"content-type": "application/json"}), 413, "limit")


# ------------------------------------------------------------------------------------------------ models, docs

def test_models_lists_models_samplers_tasks_and_limits(client):
    body = client.get("/v1/models").json()
    assert body["default"] == "digits" and body["ready"]
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["digits"]["image_size"] == 16 and by_name["digits"]["default"]
    assert by_name["tiny-class"]["cond"] == "class" and len(by_name["tiny-class"]["classes"]) == 10
    assert "dpmpp_2m" in body["samplers"] and set(body["tasks"]) == {"generate", "upscale", "edit", "inpaint"}
    assert body["limits"]["max_steps"] == LIMITS.max_steps


def test_openapi_docs_render_from_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[0]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        r = client.get(f"/static-offline-docs/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000
    assert "redoc.standalone.js" in client.get("/redoc").text
    spec = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/upscale", "/v1/edit", "/v1/inpaint", "/v1/models", "/health", "/predict"} <= set(spec["paths"])


def test_root_redirects_to_the_docs_without_a_ui(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/docs"

