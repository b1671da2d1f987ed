import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from noisecraft.data.transforms import convert_tensor, flatten_pil, resize_square_pil, to_unit_range


def test_to_unit_range_is_exact_at_the_ends():
    x = to_unit_range(np.array([0, 8, 16], dtype=np.float64), 16.0)
    assert x.dtype == torch.float32 and x.tolist() == [-1.0, 0.0, 1.0]


def test_channel_conversion():
    rgb = torch.tensor([1.0, -1.0, -1.0])[None, :, None, None]              # pure red, (1, 3, 1, 1)
    assert convert_tensor(rgb, None, 1).item() == pytest.approx(0.299 - 0.701)
    grey = torch.full((2, 1, 3, 3), 0.25)
    assert torch.equal(convert_tensor(grey, None, 3), torch.full((2, 3, 3, 3), 0.25))


def test_upsampling_is_plain_bilinear():
    x = torch.tensor([[[[-1.0, 1.0]]]]).expand(1, 1, 2, 2)
    assert convert_tensor(x, 4, None)[0, 0, 0].tolist() == [-1.0, -0.5, 0.5, 1.0]


def test_downsampling_is_antialiased():
    stripes = torch.tensor([1.0, -1.0, 1.0] * 4).expand(1, 1, 12, 12)     # period 3 aliases at 1/3 scale
    plain = F.interpolate(stripes, size=(4, 4), mode="bilinear", align_corners=False)
    assert plain.abs().max() == 1 and convert_tensor(stripes, 4, None).abs().max() < 0.5


def test_flatten_composites_on_white_and_scales_16_bit():
    assert np.asarray(flatten_pil(Image.new("LA", (2, 2), (0, 0)), None)).tolist() == [[255, 255], [255, 255]]
    pal = Image.new("P", (1, 1), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert flatten_pil(pal, 3).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert np.asarray(flatten_pil(sixteen, None)).tolist() == [[0, 128, 255]]
    assert flatten_pil(Image.new("RGB", (1, 1)), None).mode == "RGB"
    assert flatten_pil(Image.new("RGB", (1, 1)), 1).mode == "L"


def test_resize_square_pil_keeps_the_centre():
    img = Image.new("L", (30, 10), 0)
    img.paste(255, (10, 0, 20, 10))
    assert resize_square_pil(img, 10).size == (10, 10) and min(resize_square_pil(img, 10).get_flattened_data()) == 255
    assert resize_square_pil(img, 5).size == (5, 5) and min(resize_square_pil(img, 5).get_flattened_data()) == 255
    assert min(resize_square_pil(img, 40).get_flattened_data()) == 255
