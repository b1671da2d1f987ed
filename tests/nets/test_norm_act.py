import pytest
import torch

from noisecraft.nets import layers, norm_act
from noisecraft.nets import winograd as wg

pytestmark = pytest.mark.skipif(wg.library() is None, reason="no C compiler: the kernels are not built")


def _rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _inputs(n, c, size, modulated, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(n, c, size, size, generator=g) + 0.5).contiguous(memory_format=torch.channels_last)
    weight, bias = 1 + 0.3 * torch.randn(c, generator=g), 0.2 * torch.randn(c, generator=g)
    scale, shift = ((0.3 * torch.randn(n, c, 1, 1, generator=g) for _ in range(2)) if modulated else (None, None))
    return [t if t is None else t.requires_grad_() for t in (x, weight, bias, scale, shift)]


def _exact(inputs, groups, act, da):
    """norm_act() op by op in float64, and its gradients."""
    wide = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    y = layers.norm_act(wide[0], wide[1], wide[2], groups, 1e-6, wide[3], wide[4], act)
    return y, torch.autograd.grad(y, [t for t in wide if t is not None], da.double())


# 96 channels: a row in two steps of 64; 7x7: one pixel run per image; 1 x 96 x 96: three runs of <= 4096 pixels.
@pytest.mark.parametrize("n,c,size,groups,modulated,act", [(4, 64, 16, 8, True, True), (2, 32, 7, 8, False, True),
                                                           (3, 96, 9, 8, True, False), (1, 128, 8, 4, False, False),
                                                           (1, 16, 96, 8, True, True)])
def test_the_kernels_match_the_ops_in_float64(n, c, size, groups, modulated, act):
    inputs = _inputs(n, c, size, modulated)
    assert norm_act.applies(inputs[0], inputs[1], inputs[2], groups, inputs[3])
    da = torch.randn(n, c, size, size)
    ref, ref_grads = _exact(inputs, groups, act, da)
    stats = norm_act.Statistics(*inputs, groups, 1e-6, act, torch.float32)
    y = norm_act.NormActFunction.apply(stats, *inputs)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, ref) < 1e-6
    assert torch.equal(stats.activation(), y)                 # what norm_conv() recomputes: the same numbers
    live = [t for t in inputs if t is not None]
    for t, g, r in zip(live, torch.autograd.grad(y, live, da), ref_grads):
        assert g.shape == t.shape and g.dtype == t.dtype
        assert _rel(g, r) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_sigmoid_kept_by_activation_gives_the_same_gradients(dtype):
    """norm_conv() computes the activation again just before the norm's backward pass, which then reads the
    sigmoid that activation() kept instead of computing it a third and fourth time."""
    x, weight, bias, scale, shift = _inputs(2, 64, 8, True)
    x = x.detach().to(dtype).contiguous(memory_format=torch.channels_last)
    da = torch.randn(x.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    stats = norm_act.Statistics(x, weight, bias, scale, shift, 8, 1e-6, True, dtype)
    y = stats.forward()
    computed = stats.backward(da)
    assert torch.equal(stats.activation(), y) and stats.sigmoid is not None
    kept = stats.backward(da)
    assert stats.sigmoid is None                                  # freed by the backward pass that read it
    for a, b in zip(computed, kept):
        assert a.dtype == b.dtype and _rel(b, a) < 1e-6          # fp32 rounding apart


def test_bf16_in_and_out():
    x, weight, bias, scale, shift = _inputs(2, 64, 8, True)
    da = torch.randn_like(x)
    ref, (ref_dx, *_) = _exact((x, weight, bias, scale, shift), 8, True, da)
    xb = x.detach().bfloat16().requires_grad_()
    stats = norm_act.Statistics(xb, weight, bias, scale, shift, 8, 1e-6, True, torch.bfloat16)
    y = norm_act.NormActFunction.apply(stats, xb, weight, bias, scale, shift)
    (dx,) = torch.autograd.grad(y, (xb,), da.bfloat16())
    assert y.dtype == dx.dtype == torch.bfloat16
    assert _rel(y, ref) < 0.01 and _rel(dx, ref_dx) < 0.01


def test_bf16_autocast_returns_the_activation_in_bf16():
    x, weight, bias, _, _ = _inputs(2, 32, 8, False)
    with torch.no_grad():
        plain = norm_act.norm_act(x, weight, bias, 8, 1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert norm_act.output_dtype(x) == torch.bfloat16
            half = norm_act.norm_act(x, weight, bias, 8, 1e-6)
    assert plain.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert torch.equal(half, plain.bfloat16())


def test_a_constant_group_normalises_to_its_bias_without_nans():
    x, weight, bias, _, _ = _inputs(1, 16, 8, False)
    x = torch.full_like(x, 3.0).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = norm_act.norm_act(x, weight, bias, 8, 1e-6, act=False)
    # 1/std = 1/sqrt(eps) = 1000: x * A + B cancels 3000-sized terms in fp32, as PyTorch's group_norm does (1e-4).
    assert not y.isnan().any()
    torch.testing.assert_close(y, bias.detach()[None, :, None, None].expand_as(y), atol=1e-3, rtol=0)


@pytest.mark.parametrize("case", ["nchw", "float64", "no affine", "float16 autocast", "disabled"])
def test_other_calls_take_the_ops(case):
    x, weight, bias, _, _ = _inputs(2, 32, 8, False)
    if case == "nchw":
        x = x.contiguous()
    if case == "float64":
        x = x.double()
    if case == "no affine":
        weight = bias = None
    if case == "float16 autocast":
        with torch.autocast("cpu", dtype=torch.float16):
            assert not norm_act.applies(x, weight, bias, 8)
        return
    if case == "disabled":
        with norm_act.disabled():
            assert not norm_act.applies(x, weight, bias, 8)
        assert norm_act.applies(x, weight, bias, 8)               # and back on after the block
        return
    assert not norm_act.applies(x, weight, bias, 8)
