"""noisecraft/nets/layers.py: the attention helper's two paths compute the same softmax(q k^T / sqrt(d)) v."""
import pytest
import torch
import torch.nn.functional as F

from noisecraft.nets import layers, norm_act


def _qkv(dtype, n=16, l=7, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, m, 8, generator=g) for m in (n, l, l))
    return [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v)]


def _reference(q, k, v, mask):
    """The definition, in float64."""
    q, k, v = (t.detach().double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


@pytest.fixture
def fused_calls(monkeypatch) -> list:
    """One entry per call of the fused kernel from noisecraft.nets.layers."""
    calls, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


def test_bf16_training_uses_the_explicit_product_and_matches_the_definition(fused_calls):
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 4:] = False                                       # a padded caption
    q, k, v = _qkv(torch.bfloat16)
    out = layers.attention(q, k, v, mask)
    assert not fused_calls and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask), atol=0.03, rtol=0.03)
    out.float().square().sum().backward()

    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask).square().sum().backward()
    for a, b in ((q, q32), (k, k32), (v, v32)):
        assert float((a.grad.float() - b.grad).norm() / b.grad.norm()) < 0.03


def test_fp32_uses_the_fused_kernel(fused_calls):
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    q, k, v = _qkv(torch.float32)
    torch.testing.assert_close(layers.attention(q, k, v, mask).double(), _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        layers.attention(*_qkv(torch.float32, requires_grad=False))
    assert len(fused_calls) == 2


def test_bf16_inference_takes_the_explicit_product_in_batch_chunks(fused_calls, monkeypatch):
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 3:] = False
    q, k, v = _qkv(torch.bfloat16, requires_grad=False)
    with torch.inference_mode():
        whole = layers.attention(q, k, v, mask)
        monkeypatch.setattr(layers, "SCORES_PER_CHUNK", 3 * 16 * 7)            # one image's scores per chunk
        chunks = []
        real = layers._explicit_attention
        monkeypatch.setattr(layers, "_explicit_attention", lambda *a: chunks.append(1) or real(*a))
        chunked = layers.attention(q, k, v, mask)
        shared = mask[1:]                                          # (1, 1, 1, L): one mask for the batch
        chunked_shared = layers.attention(q, k, v, shared)
    assert not fused_calls and len(chunks) == 4
    assert torch.equal(whole, chunked)
    torch.testing.assert_close(whole.double(), _reference(q, k, v, mask), atol=0.03, rtol=0.03)
    torch.testing.assert_close(chunked_shared.double(), _reference(q, k, v, shared), atol=0.03, rtol=0.03)


# -- norm_conv(): the activation between a GroupNorm and a convolution, recomputed in the backward pass -----------
def _block(act_scale: bool, conv_cls=layers.Conv3x3, channels=32):
    torch.manual_seed(0)
    norm, conv = layers.norm(channels, 8), conv_cls(channels, channels)
    with torch.no_grad():
        for p in (norm.weight, norm.bias):
            p.normal_()                                            # not the identity norm, so its gradients show
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(4, channels, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    scale, shift = (torch.randn(4, channels, 1, 1, requires_grad=True) for _ in range(2)) if act_scale else (None, None)
    return norm, conv, x, scale, shift


def _run(fn, norm, conv, x, scale, shift, act=True):
    params = [x, norm.weight, norm.bias, conv.weight, conv.bias] + [t for t in (scale, shift) if t is not None]
    for p in params:
        p.grad = None
    y = fn(norm, conv, x, scale, shift, act)
    (y.square() * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), [p.grad.clone() for p in params]


def _op_by_op(norm, conv, x, scale, shift, act):
    return conv(layers.norm_act(x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift, act))


def _recomputed(norm, conv, x, scale, shift, act):
    return layers.norm_conv(conv, norm, x, scale, shift, act)


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("modulated, act, conv_cls", [(False, True, layers.Conv3x3), (True, True, layers.Conv3x3),
                                                      (False, False, lambda c, o: torch.nn.Conv2d(c, 3 * o, 1))])
def test_norm_conv_gives_the_same_output_and_gradients(modulated, act, conv_cls):
    block = _block(modulated, conv_cls)
    y0, g0 = _run(_op_by_op, *block, act=act)
    with norm_act.disabled():                                     # recomputed op by op: the same numbers
        y1, g1 = _run(_recomputed, *block, act=act)
    assert torch.equal(y0, y1)
    for a, b in zip(g0, g1):
        assert torch.equal(a, b)
    assert norm_act.applies(block[2], block[0].weight, block[0].bias, 8)
    y2, g2 = _run(_recomputed, *block, act=act)                   # the compiled kernels: fp32 rounding apart
    assert _rel(y2, y0) < 1e-5
    for a, b in zip(g2, g0):
        assert _rel(a, b) < 1e-5


def test_norm_conv_gives_the_same_gradients_under_bf16_autocast():
    block = _block(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y0, g0 = _run(_op_by_op, *block)
        with norm_act.disabled():
            y1, g1 = _run(_recomputed, *block)
        y2, g2 = _run(_recomputed, *block)                        # the kernels, their activation in bf16
    assert torch.equal(y0, y1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert _rel(y2, y0) < 0.02
    for a, b in zip(g2, g0):
        assert _rel(a, b) < 0.03


def _retained_mb(fn) -> float:
    """Tensor memory allocated during fn() and still alive after it (the profiler's count)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        keep = fn()
    del keep
    return sum(e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]") / 2**20


def test_a_resblock_keeps_two_activations_for_its_backward_pass_not_seven(monkeypatch):
    torch.manual_seed(0)
    block = layers.ResBlock(64, 64, 32, 8, 0.0).to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    emb = torch.randn(8, 32)
    activation = x.numel() * 4 / 2**20
    recomputing = _retained_mb(lambda: block(x, emb))
    monkeypatch.setattr(layers.torch.compiler, "is_compiling", lambda: True)   # the op-by-op path (what compile runs)
    op_by_op = _retained_mb(lambda: block(x, emb))
    # conv1's output h (the second norm's input) and the block's output, against those plus the norms' outputs,
    # the modulated activation and both SiLU outputs.
    assert recomputing < 2.5 * activation < 6 * activation < op_by_op


def test_norm_conv_refuses_an_input_changed_in_place_before_the_backward_pass():
    norm, conv, x, scale, shift = _block(False)
    h = x * 1.0
    y = layers.norm_conv(conv, norm, h)
    h.add_(1.0)                                                  # the recomputation would see the changed tensor
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_norm_conv_backward_twice_with_a_retained_graph():
    norm, conv, x, scale, shift = _block(True)
    y = layers.norm_conv(conv, norm, x, scale, shift)
    first = torch.autograd.grad(y.square().sum(), (x, norm.weight, scale), retain_graph=True)
    second = torch.autograd.grad(y.square().sum(), (x, norm.weight, scale))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_concat_channels_gives_dense_gradients_in_each_inputs_layout():
    a = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(2, 8, 4, 4).requires_grad_()                              # NCHW
    out = layers.concat_channels([a, b])
    assert torch.equal(out, torch.cat([a, b], dim=1))
    grad = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
    ga, gb = torch.autograd.grad(out, (a, b), grad)
    assert torch.equal(ga, grad[:, :16]) and torch.equal(gb, grad[:, 16:])
    assert ga.is_contiguous(memory_format=torch.channels_last) and gb.is_contiguous()
