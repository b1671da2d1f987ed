import numpy as np
import torch

from noisecraft import NoiseSchedule
from noisecraft.viz import figure_png, forward_strip, from_pil, make_grid, reverse_frame, schedule_figure, to_pil


def test_grid_layout_and_values():
    x = torch.stack([torch.full((1, 8, 8), v) for v in (-1.0, 1.0, 0.0)])
    g = make_grid(x, nrow=2, pad=2, scale=1)
    assert g.size == (2 * 10 + 2, 2 * 10 + 2) and g.mode == "L"
    a = np.asarray(g)
    assert a[2, 2] == 0 and a[2, 12] == 255 and a[12, 2] == 128 and a[0, 0] == 255


def test_pil_round_trip():
    x = torch.rand(3, 5, 5) * 2 - 1
    torch.testing.assert_close(from_pil(to_pil(x), 3), x, atol=1 / 127.5, rtol=0)


def test_forward_strip_fades_signal_into_noise():
    x0 = torch.ones(2, 1, 8, 8) * 0.8
    strip = forward_strip(x0, NoiseSchedule.linear(), [-1, 0, 999], generator=torch.Generator().manual_seed(0), scale=2)
    assert strip.size[1] > 2 * 16 and strip.size[0] > 3 * 16
    first_tile = np.asarray(strip.convert("L"))[4:20, 4:20]
    assert first_tile.std() < 1                                   # x_0 is flat


def test_reverse_frame_and_schedule_plot():
    frame = reverse_frame(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), "step 1/5")
    grid = 2 * (64 + 2) + 2                                       # 2x2 tiles of 8px scaled to 64, 2px gutters
    assert frame.size == (2 * grid + 3 * 4, grid + 14 + 2 * 4)     # two grids side by side, a caption line
    png = figure_png(schedule_figure({"linear": NoiseSchedule.linear(), "cosine": NoiseSchedule.cosine()}))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
