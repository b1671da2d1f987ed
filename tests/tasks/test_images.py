"""Task inputs: any mode and size to the model's shape (with a warning when resized), boxes and masks."""
import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft import NoisecraftError
from noisecraft.tasks.images import box_mask, list_inputs, parse_box, read_image, read_mask, to_model_image, to_model_mask


def test_rgba_grey_and_rgb_inputs_become_the_models_shape(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 0                                                 # fully transparent: composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert torch.equal(to_model_image(read_image(tmp_path / "a.png"), 1, 16), torch.ones(1, 16, 16))
    grey = Image.fromarray(np.full((16, 16), 0, np.uint8), "L")
    assert torch.equal(to_model_image(grey, 3, 16), -torch.ones(3, 16, 16))
    with pytest.warns(UserWarning, match="is 20x24: its centre square was resized to the model's 16x16"):
        x = to_model_image(Image.new("RGB", (20, 24), "red"), 1, 16)
    assert x.shape == (1, 16, 16)


def test_a_folder_lists_its_images_in_order_and_bad_files_are_clear_errors(tmp_path):
    for name in ("b.png", "a.png"):
        Image.new("L", (4, 4)).save(tmp_path / name)
    assert [p.name for p in list_inputs(tmp_path)] == ["a.png", "b.png"]
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(NoisecraftError, match="not a readable image"):
        read_image(tmp_path / "c.png")
    with pytest.raises(NoisecraftError, match="does not exist"):
        list_inputs(tmp_path / "missing.png")


def test_boxes_are_checked_and_masks_follow_the_images_resize(tmp_path):
    assert parse_box("1,2,3,4", 4, 4) == (1, 2, 3, 4)
    for bad in ("1,2,3", "0,0,5,4", "2,0,2,4", "a,b,c,d"):
        with pytest.raises(NoisecraftError, match="box"):
            parse_box(bad, 4, 4)
    m = to_model_mask(box_mask("0,0,4,8", 8, 8), 8, 8, 16)                   # left half of an 8x8 image at 16x16
    assert m.shape == (1, 16, 16) and m[..., :8].eq(1).all() and m[..., 8:].eq(0).all()
    Image.new("L", (8, 8), 0).save(tmp_path / "black.png")
    with pytest.raises(NoisecraftError, match="selects no pixels"):
        to_model_mask(read_mask(tmp_path / "black.png"), 8, 8, 16)
    with pytest.raises(NoisecraftError, match="the mask is 8x8 but the image is 9x8"):
        to_model_mask(read_mask(tmp_path / "black.png"), 9, 8, 16)
