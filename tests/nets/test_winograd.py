"""noisecraft/nets/winograd.py: F(4x4, 3x3) computes the direct 3x3 convolution (fp32 within 1e-4), and
Conv3x3 uses it only where it applies."""
import pytest
import torch
import torch.nn.functional as F

from noisecraft.nets import winograd
from noisecraft.nets.winograd import Conv3x3, conv3x3, transform_weight


def _case(n, c, c_out, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g), torch.randn(c_out, c, 3, 3, generator=g) / (3 * c ** 0.5),
            torch.randn(c_out, generator=g))


def _close(out, ref):
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize("n, c, c_out, h, w", [(2, 8, 5, 8, 8), (3, 16, 16, 12, 20), (1, 130, 128, 4, 4)])
def test_winograd_equals_the_direct_convolution(n, c, c_out, h, w):
    x, weight, bias = _case(n, c, c_out, h, w)
    ref = F.conv2d(x, weight, bias, padding=1)
    _close(conv3x3(x, transform_weight(weight), bias), ref)
    _close(conv3x3(x.contiguous(memory_format=torch.channels_last), transform_weight(weight), None),
           ref - bias[:, None, None])
    assert conv3x3(x, transform_weight(weight), bias).is_contiguous(memory_format=torch.channels_last)


def test_large_batches_go_in_chunks_with_the_same_result(monkeypatch):
    x, weight, bias = _case(7, 8, 4, 8, 8)
    monkeypatch.setattr(winograd, "MAX_TILE_BYTES", 2 * 36 * 4 * 8 * 4)    # two images per chunk
    calls = []
    real = winograd._conv_chunk
    monkeypatch.setattr(winograd, "_conv_chunk", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    _close(conv3x3(x, transform_weight(weight), bias), F.conv2d(x, weight, bias, padding=1))
    assert calls == [2, 2, 2, 1]


def test_sizes_not_divisible_by_four_are_refused():
    x, weight, bias = _case(1, 4, 4, 6, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        conv3x3(x, transform_weight(weight), bias)


def _module(c=128, c_out=128):
    torch.manual_seed(0)
    conv = Conv3x3(c, c_out)
    assert conv.winograd == (min(c, c_out) >= winograd.MIN_CHANNELS)
    return conv


def _count(monkeypatch):
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(1) or real(*a))
    return calls


def test_conv3x3_module_uses_winograd_only_for_fp32_inference_and_follows_weight_changes(monkeypatch):
    conv, calls = _module(), _count(monkeypatch)
    x = torch.randn(2, 128, 8, 8)
    with torch.inference_mode():
        _close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        with torch.no_grad():
            conv.weight.mul_(-2)                                 # as an optimizer step or EMA copy would
        _close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        assert len(calls) == 2
        conv(torch.randn(1, 128, 6, 6))                          # not divisible by 4
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)
    assert len(calls) == 2
    conv(x.requires_grad_()).sum().backward()                    # training: the direct convolution
    assert len(calls) == 2 and conv.weight.grad is not None
    assert list(conv.state_dict()) == ["weight", "bias"]


def test_narrow_convolutions_and_compiled_models_keep_the_direct_convolution(monkeypatch):
    from noisecraft.device import speed_up
    from noisecraft.models import DiffusionModel, ModelConfig
    from noisecraft.nets import PRESETS

    calls = _count(monkeypatch)
    with torch.inference_mode():
        _module(64, 128)(torch.randn(1, 64, 8, 8))
    assert not calls
    model = DiffusionModel(ModelConfig(unet=PRESETS["small"]))
    wide = [m for m in model.modules() if isinstance(m, Conv3x3) and m.winograd]
    assert wide
    speed_up(model, "fp32", compile=True)
    assert not any(m.winograd for m in wide)


def test_gradients_flow_through_the_transforms(monkeypatch):
    monkeypatch.setattr(winograd, "MAX_TILE_BYTES", 2 * 36 * 4 * 8 * 4)    # two images per chunk
    x, weight, bias = _case(3, 8, 4, 8, 8)
    grads = []
    for fn in (lambda x, w, b: conv3x3(x, transform_weight(w), b), lambda x, w, b: F.conv2d(x, w, b, padding=1)):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        fn(*leaves).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
