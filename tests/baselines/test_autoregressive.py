import itertools
import math

import pytest
import torch

from noisecraft import NoisecraftError
from noisecraft.baselines.autoregressive import PRESETS, ARConfig, PixelCNN
from noisecraft.baselines.common import dequantize

SMALL = ARConfig(image_size=8, levels=4, width=8, dilations=(1, 2, 1))


def test_output_at_a_pixel_depends_only_on_earlier_pixels():
    """For every pixel i (raster order): d logits_i / d x_j is 0 for j >= i, and the earlier pixels it sees
    include the one up and to the right, the original PixelCNN's blind spot."""
    torch.manual_seed(0)
    net = PixelCNN(SMALL)
    size = SMALL.image_size
    x = torch.randn(1, 1, size, size, requires_grad=True)
    logits = net(x)                                                  # (1, K, H, W)
    for r, c in itertools.product(range(size), range(size)):
        (grad,) = torch.autograd.grad(logits[0, :, r, c].sum(), x, retain_graph=True)
        seen = grad[0, 0].abs() > 0
        i = r * size + c
        assert not seen.flatten()[i:].any(), f"pixel {(r, c)} sees itself or a later pixel"
        if r > 0 and c < size - 1:
            assert seen[r - 1, c + 1], f"pixel {(r, c)} does not see {(r - 1, c + 1)} (blind spot)"
        if c > 0:
            assert seen[r, c - 1]


def test_likelihood_is_exact_it_sums_to_one_over_all_images():
    """A 2x2 image with 3 levels has 81 possible values; their probabilities exp(-bpd * D * ln 2) sum to 1."""
    torch.manual_seed(0)
    net = PixelCNN(ARConfig(image_size=2, levels=3, width=8, dilations=(1,))).eval()
    every = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    bpd = net.bits_per_dim(dequantize(every, 3))                    # (81,)
    assert bpd.shape == (81,)
    assert float(torch.exp2(-bpd * 4).sum()) == pytest.approx(1.0, abs=1e-5)


def test_uniform_random_data_costs_log2_k_bits():
    """No model can beat log2(K) bits on uniform noise (a leak of the predicted pixel would), and a short
    training gets close to it."""
    torch.manual_seed(0)
    config = ARConfig(image_size=8, levels=16, width=16, dilations=(1, 2))
    net = PixelCNN(config)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        x = dequantize(torch.randint(0, 16, (32, 1, 8, 8), generator=g), 16)
        opt.zero_grad()
        net.loss(x).backward()
        opt.step()
    bpd = float(net.bits_per_dim(dequantize(torch.randint(0, 16, (256, 1, 8, 8), generator=g), 16)).mean())
    assert math.log2(16) - 0.05 < bpd < math.log2(16) + 0.15


def test_sample_shape_range_levels_and_per_image_generators():
    torch.manual_seed(0)
    net = PixelCNN(SMALL).eval()
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    x = net.sample(3, gens([5, 6, 7]))
    assert x.shape == (3, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    levels = (x + 1) / 2 * (SMALL.levels - 1)
    assert torch.allclose(levels, levels.round(), atol=1e-5)       # on the K-level grid
    assert torch.equal(net.sample(1, gens([6]))[0], x[1])           # image i does not depend on its batch


def test_presets_and_config_errors():
    assert PRESETS["tiny"].image_shape == (1, 16, 16) and PRESETS["mnist"].image_shape == (1, 28, 28)
    with pytest.raises(NoisecraftError, match="grey"):
        ARConfig(in_channels=3)
    with pytest.raises(NoisecraftError, match="levels"):
        ARConfig(levels=1)
    with pytest.raises(NoisecraftError, match="dropout"):
        ARConfig(dropout=1.0)


def test_dropout_acts_in_training_only_and_keeps_the_model_causal():
    torch.manual_seed(0)
    net = PixelCNN(ARConfig(image_size=8, levels=4, width=8, dilations=(1, 2, 1), dropout=0.5))
    x = dequantize(torch.randint(0, 4, (2, 1, 8, 8)), 4)
    net.train()
    assert not torch.equal(net(x), net(x))                          # a fresh mask each call
    net.eval()
    assert torch.equal(net(x), net(x))
    later = x.clone()
    later[:, :, 4:] = -later[:, :, 4:]                              # change rows 4..7 only
    net.train()
    torch.manual_seed(1)
    a = net(x)[:, :, :4]
    torch.manual_seed(1)
    b = net(later)[:, :, :4]
    assert torch.equal(a, b)                                        # rows 0..3 never see rows below, masks or not
