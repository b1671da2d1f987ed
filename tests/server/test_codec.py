import base64
import zlib

import numpy as np
import pytest
import torch

from noisecraft.errors import NoisecraftError
from noisecraft.server.codec import decode_image, encode_png, pil_to_b64
from tests.server.conftest import decode, png_b64


def test_round_trip_keeps_pixels_and_metadata():
    x = torch.linspace(-1, 1, 3 * 4 * 4).reshape(3, 4, 4)
    png = decode(encode_png(x, {"seed": 3, "model": "m"}))
    assert png.mode == "RGB" and png.text == {"seed": "3", "model": "m"}
    again = decode_image(pil_to_b64(png), "x", 64)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(png))


@pytest.mark.parametrize("side", [5000, 20000])
def test_a_huge_image_is_refused_before_its_pixels_are_decoded(side):
    # A side x side PNG header on a few bytes of data: decoding would need side^2 bytes.
    png = base64.b64decode(png_b64(np.zeros((1, 1))))
    ihdr = png[12:16] + side.to_bytes(4, "big") * 2 + png[24:29]          # chunk type + data
    bomb = png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]
    with pytest.raises(NoisecraftError, match="at most 1024 pixels"):
        decode_image(base64.b64encode(bomb).decode(), "the image", 1024)


@pytest.mark.parametrize("text, match", [("   ", "empty"), ("a" * 5, "not valid base64"),
                                         (base64.b64encode(b"GIF89a....").decode(), "not an image")])
def test_bad_inputs(text, match):
    with pytest.raises(NoisecraftError, match=match):
        decode_image(text, "the image", 64)
