"""noisecraft/nets/layers.py: the attention helper's two paths compute the same softmax(q k^T / sqrt(d)) v."""
import pytest
import torch
import torch.nn.functional as F

from noisecraft.nets import layers


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


def test_fp32_and_inference_use_the_fused_kernel(fused_calls):
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    q, k, v = _qkv(torch.float32)
    torch.testing.assert_close(layers.attention(q, k, v, mask).double(), _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        layers.attention(*_qkv(torch.bfloat16, requires_grad=False))
    assert len(fused_calls) == 2
