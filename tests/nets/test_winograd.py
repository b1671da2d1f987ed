import contextlib
import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisecraft.nets import PRESETS, UNet
from noisecraft.nets import norm_act, sdpa
from noisecraft.nets import winograd as wg
from noisecraft.nets.winograd import Conv3x3

pytestmark = pytest.mark.skipif(wg.library() is None, reason="no C compiler: the Winograd kernels are not built")

# fp32 rounding of the Winograd transforms, relative to the largest output: measured 1e-6 - 4e-6 per layer
# (the direct convolution's own rounding is 3x-8x smaller).
PER_LAYER = 3e-5


def _conv(c_in, c_out, seed=0):
    torch.manual_seed(seed)
    return Conv3x3(c_in, c_out)


def _reference(conv, x, dy=None):
    """conv2d in float64: the exact value that both fp32 paths round."""
    xr = x.detach().double().requires_grad_()
    wr, br = conv.weight.detach().double().requires_grad_(), conv.bias.detach().double().requires_grad_()
    y = F.conv2d(xr, wr, br, padding=1)
    if dy is None:
        return y
    return y, torch.autograd.grad(y, (xr, wr, br), dy.double())


def _rel(a, b):
    return float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max())


def _nhwc(*shape):
    return wg.channels_last(torch.randn(*shape))


# (1, 32, 48, 16) and (1, 48, 112, 15): one block of tiles, its output channels split among the threads,
# into ranges of an odd number of vectors.
@pytest.mark.parametrize("n,c_in,c_out,size", [(16, 64, 64, 32), (4, 128, 128, 16), (3, 32, 48, 13),
                                               (4, 16, 16, 7), (64, 128, 128, 8), (1, 192, 64, 32),
                                               (1, 32, 48, 16), (1, 48, 112, 15)])
def test_forward_matches_the_direct_convolution_to_fp32_rounding(n, c_in, c_out, size):
    conv, x = _conv(c_in, c_out), _nhwc(n, c_in, size, size)      # 13 and 7: edge tiles stick out of the image
    assert wg.applies(conv, x)
    with torch.no_grad():
        y = conv(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, _reference(conv, x)) < PER_LAYER


@pytest.mark.parametrize("n,size", [(3, 13), (1, 16)])
def test_gradients_match_the_direct_convolution(n, size):
    conv, x = _conv(32, 48), _nhwc(n, 32, size, size).requires_grad_()
    y = conv(x)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), dy)
    ref_y, ref_grads = _reference(conv, x, dy)
    assert _rel(y, ref_y) < PER_LAYER
    for name, g, r in zip(("input", "weight", "bias"), grads, ref_grads):
        assert g.shape == r.shape
        assert _rel(g, r) < PER_LAYER, name


def test_weight_gradient_alone_and_input_gradient_alone():
    conv, x = _conv(16, 32), _nhwc(2, 16, 9, 9)
    dy = torch.randn(2, 32, 9, 9)
    _, (_, ref_w, _) = _reference(conv, x, dy)
    (gw,) = torch.autograd.grad(conv(x), (conv.weight,), dy)      # x needs no gradient: first layer
    assert _rel(gw, ref_w) < PER_LAYER
    conv.requires_grad_(False)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(conv(xg), (xg,), dy)              # frozen weights: only dX
    _, (ref_x, _, _) = _reference(conv, x, dy)
    assert _rel(gx, ref_x) < PER_LAYER


def test_a_layer_keeps_nn_conv2d_parameters_and_state_dict():
    conv = _conv(32, 64)
    plain = nn.Conv2d(32, 64, 3, padding=1)
    assert isinstance(conv, nn.Conv2d)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = _nhwc(2, 32, 8, 8)
    with torch.no_grad():
        assert _rel(conv(x), plain(x).double()) < PER_LAYER


def test_the_transformed_filters_follow_the_weights_when_they_change():
    conv, x = _conv(32, 32), _nhwc(2, 32, 16, 16)
    with torch.inference_mode():
        first = conv(x)
        assert conv._filters[0] is not None and torch.equal(conv(x), first)  # cached: the same numbers
    with torch.no_grad():
        conv.weight.mul_(2)                                       # in place
    with torch.inference_mode():
        assert _rel(conv(x), 2 * first.double() - conv.bias.double()[:, None, None]) < PER_LAYER
    conv.weight = nn.Parameter(torch.zeros_like(conv.weight))     # replaced
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), conv.bias[:, None, None].expand_as(first))


def test_large_batches_and_training_keep_no_transformed_filters():
    conv = _conv(32, 32)
    with torch.inference_mode():
        conv(_nhwc(16, 32, 16, 16))                               # 256 tiles: the transform is ~1% of the call
    conv(_nhwc(2, 32, 16, 16))                                    # with gradients: the weights change each step
    assert conv._filters == (None, None)


def test_a_layer_with_cached_filters_copies_and_pickles():
    conv, x = _conv(32, 32), _nhwc(2, 32, 16, 16)
    with torch.inference_mode():
        y = conv(x)
    for other in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert other._filters == (None, None)
        with torch.inference_mode():
            assert torch.equal(other(x), y)


@pytest.mark.parametrize("case", ["nchw", "channels", "few tiles", "bf16 autocast", "float64", "disabled"])
def test_other_calls_take_the_ordinary_convolution(case, monkeypatch):
    c_in, x_shape, dtype = 32, (4, 32, 16, 16), torch.float32
    if case == "channels":
        c_in, x_shape = 24, (4, 24, 16, 16)                       # not whole SIMD vectors
    if case == "few tiles":
        x_shape = (1, 32, 8, 8)                                   # 4 tiles
    if case == "float64":
        dtype = torch.float64
    conv = _conv(c_in, 32).to(dtype)
    x = torch.randn(*x_shape, dtype=dtype)
    if case != "nchw":
        x = wg.channels_last(x)
    monkeypatch.setattr(wg, "convolve", lambda *a: pytest.fail("the Winograd path ran"))
    monkeypatch.setattr(wg, "convolve_bf16", lambda *a: pytest.fail("the bf16 Winograd path ran"))
    monkeypatch.setattr(wg, "has_bf16", lambda: False)            # bf16 autocast: a CPU without AVX-512 BF16
    with torch.no_grad():
        if case == "bf16 autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = conv(x)
            assert y.dtype == torch.bfloat16
        elif case == "disabled":
            with wg.disabled():
                y = conv(x)
            assert wg.applies(conv, x)                            # and back on after the block
        else:
            y = conv(x)
    assert y.shape == (x_shape[0], 32, *x_shape[2:])


def test_the_filters_are_read_in_any_layout_flipped_and_rounded_in_place():
    """filter_transform() reads channels_last weights, the input gradient's flipped and transposed filters and
    the bf16-rounded weights where they lie: the same numbers as from those tensors made first."""
    w = torch.randn(64, 32, 3, 3).contiguous(memory_format=torch.channels_last)
    flipped = w.flip(2, 3).transpose(0, 1).contiguous()
    assert torch.equal(wg.filter_transform(w), wg.filter_transform(w.contiguous()))
    assert torch.equal(wg.filter_transform(w, flipped=True), wg.filter_transform(flipped))
    assert torch.equal(wg.filter_transform(w, round_bf16=True), wg.filter_transform(w.bfloat16()))
    if wg.has_bf16():
        assert torch.equal(wg.filter_transform_bf16(w, flipped=True), wg.filter_transform_bf16(flipped.bfloat16()))


def test_the_kernels_refuse_buffers_they_would_misread():
    u = wg.filter_transform(torch.randn(32, 16, 3, 3))
    with pytest.raises(ValueError, match="channels_last fp32"):
        wg.convolve(torch.randn(2, 16, 8, 8), u, None)              # NCHW
    with pytest.raises(ValueError, match="channels_last fp32"):
        wg.convolve(_nhwc(2, 8, 8, 8), u, None)                     # U for other input channels
    with pytest.raises(ValueError, match="channels_last fp32"):
        wg.filter_grad(_nhwc(2, 16, 8, 8), _nhwc(2, 24, 8, 8))        # 24 channels: not whole vectors


@contextlib.contextmanager
def _plain():
    """Every compiled kernel off: PyTorch's convolutions, norms and attention."""
    with wg.disabled(), norm_act.disabled(), sdpa.disabled():
        yield


def test_the_unet_agrees_with_pytorchs_ops_forward_and_backward():
    """All of the fast path -- the Winograd convolutions, the fused norms, the attention kernel -- against
    PyTorch's ops."""
    torch.manual_seed(0)
    net = UNet(PRESETS["small"])
    with torch.no_grad():                                         # trained-like: every layer matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(4, 3, 32, 32), torch.tensor([10.0, 300.0, 600.0, 990.0])
    calls = []
    real = wg.convolve
    with torch.inference_mode():
        wg.convolve = lambda *a: calls.append(1) or real(*a)
        try:
            fast = net(x, t)
        finally:
            wg.convolve = real
        with _plain():
            plain = net(x, t)
    assert len(calls) > 20                                        # the 3x3 layers of 64 and 128 channels
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=0)
    grads = {}
    for name, ctx in (("fast", torch.enable_grad()), ("plain", _plain())):
        net.zero_grad()
        with ctx:
            net(x, t).square().mean().backward()
        grads[name] = [p.grad.clone() for p in net.parameters()]
    for (name, _), g, r in zip(net.named_parameters(), grads["fast"], grads["plain"]):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-3, msg=name)


def test_a_machine_without_a_compiler_warns_once_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setitem(wg._state, "tried", False)
    monkeypatch.setitem(wg._state, "lib", None)
    with pytest.warns(RuntimeWarning, match="could not be built.*use PyTorch's"):
        assert wg.library() is None
    conv, x = _conv(32, 32), _nhwc(2, 32, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # once: no second warning
        with torch.no_grad():
            y = conv(x)
    assert _rel(y, _reference(conv, x)) < 1e-5                    # the ordinary convolution ran
    assert not list((tmp_path / "noisecraft").glob("*"))          # no half-written library left behind


def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(wg._state, "tried", False)
    monkeypatch.setitem(wg._state, "lib", None)
    target = tmp_path / "noisecraft" / f"winograd-{wg.machine_key()}.so"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a library")
    assert wg.library() is not None
    assert target.read_bytes() != b"half a library"


def test_a_build_is_atomic_and_cached_per_machine(tmp_path):
    target = tmp_path / "noisecraft" / f"winograd-{wg.machine_key()}.so"
    wg.build(target)
    assert target.exists() and [p.name for p in target.parent.iterdir()] == [target.name]
    assert len(wg.machine_key()) == 16 and wg.machine_key() == wg.machine_key()


def test_the_operators_that_torch_compile_sees_are_well_formed_and_exact():
    x = _nhwc(2, 16, 9, 9).requires_grad_()
    conv = _conv(16, 32)
    for op, args in ((wg.conv3x3_op, (x, conv.weight, conv.bias)),
                     (wg.weight_grad_op, (x.detach(), torch.randn(2, 32, 9, 9), False)),
                     (wg.input_grad_op, (_nhwc(2, 32, 9, 9), conv.weight.detach()))):
        assert set(torch.library.opcheck(op, args).values()) == {"SUCCESS"}   # schema, fake tensors, autograd
    y = wg.conv3x3_op(x, conv.weight, conv.bias)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), dy)
    ref_y, ref_grads = _reference(conv, x, dy)
    assert _rel(y, ref_y) < PER_LAYER
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < PER_LAYER


# -- bf16 products (AVX-512 BF16) --------------------------------------------------------------------------------
# The transformed tiles and filters are rounded to bf16 for the products; the transforms and sums stay fp32.
# Relative RMS error per layer against the exact convolution, measured 1.6-1.7% (the direct bf16 convolution:
# 0.3%); the Winograd transforms amplify the rounding of the transformed values.
BF16_PER_LAYER = 0.03
bf16_only = pytest.mark.skipif(not wg.has_bf16(), reason="no AVX-512 BF16: the kernels have no bf16 products")


def _rel_rms(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm())


def test_the_bf16_filters_are_those_of_the_rounded_weights_rounded_and_paired_by_input_channel():
    w = torch.randn(48, 32, 3, 3)
    u, packed = wg.filter_transform(w.bfloat16()), wg.filter_transform_bf16(w)
    assert packed.shape == (36, 16, 48, 2) and packed.dtype == torch.bfloat16
    assert torch.equal(packed, u.reshape(36, 16, 2, 48).transpose(2, 3).bfloat16())


@bf16_only
@pytest.mark.parametrize("n,c_in,c_out,size", [(8, 64, 64, 16), (3, 32, 48, 13), (1, 48, 112, 15), (4, 16, 16, 7)])
def test_bf16_autocast_runs_the_bf16_products_within_the_documented_tolerance(n, c_in, c_out, size, monkeypatch):
    conv, x = _conv(c_in, c_out), _nhwc(n, c_in, size, size).requires_grad_()
    dy = torch.randn(n, c_out, size, size)
    calls = []
    real = wg.convolve_bf16
    monkeypatch.setattr(wg, "convolve_bf16", lambda *a: calls.append(1) or real(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert wg.applies_bf16(conv, x) and not wg.applies(conv, x)
        y = conv(x)                                               # training: the operator, with gradients
        with torch.no_grad():
            y_eval = conv(x)                                      # inference: the cached-filter call
    assert len(calls) >= 2                                        # forward and dX
    assert y.dtype == y_eval.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y_eval)
    grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), dy.bfloat16())
    ref_y, ref_grads = _reference(conv, x, dy)
    assert 0 < _rel_rms(y, ref_y) < BF16_PER_LAYER                # > 0: bf16 really ran
    for name, g, r in zip(("input", "weight", "bias"), grads, ref_grads):
        assert g.dtype == torch.float32, name                     # the dtypes of x and the parameters
        assert _rel_rms(g, r) < BF16_PER_LAYER, name


@bf16_only
def test_bf16_products_take_bf16_inputs_and_bf16_weights():
    conv, x = _conv(32, 32), _nhwc(4, 32, 16, 16)
    ref = _reference(conv, x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        from_bf16_input = conv(x.bfloat16())
        conv.to(torch.bfloat16)                                   # as cast_once's copy holds them
        from_bf16_weights = conv(x)
        fp32_weights = _conv(32, 32)(x)
    assert _rel_rms(from_bf16_input, ref) < BF16_PER_LAYER
    assert torch.equal(from_bf16_weights, fp32_weights)          # autocast rounds the weights to bf16 the same way


@bf16_only
def test_the_bf16_weight_gradient_sums_bf16_products_in_fp32():
    x, dy = _nhwc(3, 32, 13, 13), _nhwc(3, 48, 13, 13)
    exact = wg.filter_grad(x, dy)
    for x_in, dy_in in ((x, dy), (x.bfloat16(), dy.bfloat16())):
        du = wg.filter_grad(x_in, dy_in, bf16_products=True)
        assert du.dtype == torch.float32
        assert 0 < _rel_rms(du, exact.double()) < BF16_PER_LAYER


@bf16_only
def test_the_bf16_operators_are_well_formed():
    x = _nhwc(2, 16, 9, 9).requires_grad_()
    conv = _conv(16, 32)
    for op, args in ((wg.conv3x3_bf16_op, (x, conv.weight, conv.bias, True)),
                     (wg.conv3x3_bf16_op, (x, conv.weight, None, False)),
                     (wg.weight_grad_op, (x.detach(), torch.randn(2, 32, 9, 9), True)),
                     (wg.input_grad_bf16_op, (_nhwc(2, 32, 9, 9), conv.weight.detach(), True))):
        assert set(torch.library.opcheck(op, args).values()) == {"SUCCESS"}


def test_the_bf16_kernel_refuses_buffers_it_would_misread():
    u = wg.filter_transform_bf16(torch.randn(32, 16, 3, 3))
    with pytest.raises(ValueError, match="channels_last fp32 or bf16"):
        wg.convolve_bf16(torch.randn(2, 16, 8, 8), u, None, torch.bfloat16)             # NCHW
    with pytest.raises(ValueError, match="channels_last fp32 or bf16"):
        wg.convolve_bf16(_nhwc(2, 16, 8, 8), wg.filter_transform(torch.randn(32, 16, 3, 3)), None, torch.bfloat16)
    with pytest.raises(ValueError, match="channels_last fp32 or bf16"):
        wg.convolve_bf16(_nhwc(2, 16, 8, 8).double(), u, None, torch.bfloat16)
