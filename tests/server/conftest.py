"""One app for the API tests: the shipped 16x16 digits model, a barely trained class-conditional model and a
tiny randomly initialised diffusers UNet folder, with small limits so that every limit can be hit cheaply."""
import base64
import io
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from noisecraft.server import Limits, Settings, create_app

LIMITS = Limits(max_steps=50, max_model_calls=400, max_batch=4, max_image_side=64, max_body_bytes=200_000)


def png_b64(array: np.ndarray, mode: str = "L") -> str:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def wait_ready(client: TestClient, route: str = "/health", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get(route).status_code != 200:
        assert time.monotonic() < deadline, client.get(route).json()
        time.sleep(0.05)


@pytest.fixture(scope="session")
def diffusers_dir(tmp_path_factory):
    """A saved diffusers UNet2DModel folder (8x8 RGB, random weights) with a DDPM scheduler config beside it."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = tmp_path_factory.mktemp("diffusers") / "tiny-unet"
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=4, attention_head_dim=8).save_pretrained(path)
    DDPMScheduler(num_train_timesteps=1000).save_config(path)
    return path


@pytest.fixture(scope="session")
def app(tiny_class_model_dir, diffusers_dir):
    return create_app(["digits", tiny_class_model_dir, diffusers_dir], Settings(limits=LIMITS, queue_size=4),
                      ui=False)


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def digit(client) -> np.ndarray:
    """A 16x16 grey digit made by the server itself, as uint8."""
    r = client.post("/v1/generate", json={"steps": 5, "seed": 0})
    return np.asarray(decode(r.json()["images"][0]["image"]))
