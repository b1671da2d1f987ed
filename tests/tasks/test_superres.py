"""Zero-shot super-resolution: the box-downsampled output equals the low-res input, with every sampler."""
import pytest
import torch

from noisecraft import NoiseSchedule, NoisecraftError, load_model, upscale
from noisecraft.tasks.common import box_down, box_up
from noisecraft.tasks.superres import project_box
from tests.analytic import GaussianData, GaussianEpsModel


@pytest.fixture(scope="module")
def setup():
    schedule = NoiseSchedule.linear()
    data = GaussianData(shape=(1, 4, 4), seed=3)
    return schedule, data, GaussianEpsModel(data, schedule)


def test_box_projection_is_exact_and_idempotent():
    x, y = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    p = project_box(x, y, 2, clip=False)
    assert torch.allclose(box_down(p, 2), y, atol=1e-12) and torch.allclose(project_box(p, y, 2, clip=False), p)
    assert torch.allclose(box_down(box_up(y, 2), 2), y)
    # the nearest such point: the correction is block-constant, so orthogonal to every change that keeps box_down
    assert torch.allclose(p - x, box_up(box_down(p - x, 2), 2))


def test_box_projection_with_clipping_keeps_both_constraints():
    x = 3 * torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.rand(4, 1, 4, 4, dtype=torch.float64) * 2 - 1
    p = project_box(x, y, 2, clip=True)
    assert p.abs().max() <= 1 and (box_down(p, 2) - y).abs().max() < 1e-9
    inside = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 1.6 - 0.8
    assert torch.allclose(project_box(inside, box_down(inside, 2), 2, clip=True), inside, atol=1e-9)   # a fixed point


@pytest.mark.parametrize("method, sampler", [("project", "ddim"), ("project", "ddpm"), ("project", "dpmpp_2m"),
                                             ("project", "heun"), ("project", "unipc"), ("project", "euler_a"),
                                             ("ilvr", "ddpm")])
def test_output_downsamples_to_the_input(setup, method, sampler):
    schedule, data, model = setup
    x, _ = data.sample(8, torch.Generator().manual_seed(0))
    y = box_down(x.float(), 2)
    out = upscale(model, y, 2, method=method, schedule=schedule, sampler=sampler, steps=10, clip_denoised=False,
                  generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert (box_down(out, 2) - y).abs().max() < 1e-5


def test_shipped_model_upscales_by_the_factor_its_size_implies():
    model = load_model("digits")                                               # 16x16
    y = torch.rand(2, 1, 8, 8) * 2 - 1
    out = upscale(model, y, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 16, 16) and (box_down(out, 2) - y).abs().max() < 1e-3
    with pytest.raises(NoisecraftError, match="a x4 input must be 1x4x4"):
        upscale(model, y, 4)
    with pytest.raises(NoisecraftError, match="cannot infer the factor"):
        upscale(model, torch.zeros(1, 1, 5, 5))
    with pytest.raises(NoisecraftError, match="unknown super-resolution method"):
        upscale(model, y, method="sr4")
    with pytest.raises(NoisecraftError, match="ILVR runs DDPM"):
        upscale(model, y, method="ilvr", sampler="ddim")


def test_a_super_resolution_model_gets_the_low_res_image_under_every_method(tiny_sr_model_dir):
    model = load_model(tiny_sr_model_dir)
    calls = []
    forward = model.net.forward
    model.net.forward = lambda x, t, **cond: calls.append(cond["low_res"]) or forward(x, t, **cond)
    y = torch.rand(3, 1, 4, 4) * 2 - 1
    for method, sampler in [("none", "ddim"), ("project", "ddim"), ("ilvr", "ddpm")]:
        calls.clear()
        out = upscale(model, y, method=method, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
        assert out.shape == (3, 1, 16, 16) and len(calls) == 4
        assert all(torch.equal(c, y) for c in calls)
        if method != "none":
            assert (box_down(out, 4) - y).abs().max() < 1e-3
    with pytest.raises(NoisecraftError, match="upsamples x4, not x2"):
        upscale(model, torch.zeros(1, 1, 8, 8))


def test_method_none_needs_a_super_resolution_model():
    with pytest.raises(NoisecraftError, match="method 'none'"):
        upscale(load_model("digits"), torch.zeros(1, 1, 8, 8), method="none")
