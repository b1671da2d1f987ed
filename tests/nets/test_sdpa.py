"""noisecraft/nets/sdpa.py: the compiled fp32 attention and its gradients against PyTorch's in float64."""
import pytest
import torch
import torch.nn.functional as F

from noisecraft.nets import layers, sdpa
from noisecraft.nets import winograd as wg

pytestmark = pytest.mark.skipif(wg.library() is None, reason="no C compiler: the kernels are not built")


def _rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _qkv(b, heads, n, length, d, seed=0, dtype=torch.float32):
    """q, k, v as the attention block makes them: (B, heads, N, d) views into a (B, N, 3C)-like tensor (rows of
    3 heads * d floats) and a separate keys-and-values tensor, so that no stride is a plain one."""
    g = torch.Generator().manual_seed(seed)
    qx = torch.randn(b, n, 3 * heads * d, generator=g).to(dtype)[..., : heads * d]
    kv = (2 * torch.randn(b, length, 2 * heads * d, generator=g)).to(dtype)
    q, k, v = _heads(qx, heads), _heads(kv[..., : heads * d], heads), _heads(kv[..., heads * d:], heads)
    return [t.requires_grad_() for t in (q.detach(), k.detach(), v.detach())]


bf16 = pytest.mark.skipif(not wg.has_bf16(), reason="the CPU has no AVX-512 BF16: bf16 attention takes PyTorch's")


# 256 x 256 and 64 x 64: the UNet's; 49 queries: a 7x7 image, not a whole row block; 1 x 1 x 5: a batch of one
# split into runs of rows; d = 16 and 128.
@pytest.mark.parametrize("b,heads,n,length,d", [(2, 2, 256, 256, 64), (3, 1, 49, 64, 32), (4, 2, 64, 64, 64),
                                                (1, 1, 5, 32, 128), (1, 4, 17, 16, 16)])
def test_the_kernels_match_pytorch_in_float64(b, heads, n, length, d):
    q, k, v = _qkv(b, heads, n, length, d)
    assert sdpa.applies(q, k, v)
    wide = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*wide)
    do = torch.randn(ref.shape, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, wide, do)

    out = sdpa.attention(q, k, v)
    assert out.shape == (b, heads, n, d) and out.transpose(1, 2).is_contiguous()   # laid out for the projection
    assert _rel(out, ref) < 1e-6
    for t, g, r in zip((q, k, v), torch.autograd.grad(out, (q, k, v), do.float()), ref_grads):
        assert g.shape == t.shape and g.dtype == torch.float32
        assert _rel(g, r) < 1e-6
    with torch.no_grad():
        assert _rel(sdpa.attention(q, k, v), ref) < 1e-6


# In bf16 the products round P and dS to bf16 (as autocast's explicit product does; it also rounds S and dP):
# 0.2-0.4% relative RMS against float64 on the same bf16 inputs, where the explicit product gives 0.4-0.9%.
@bf16
@pytest.mark.parametrize("b,heads,n,length,d", [(2, 2, 256, 256, 64), (3, 1, 48, 64, 32), (1, 4, 16, 16, 16),
                                                (1, 1, 32, 32, 128)])
def test_the_bf16_kernels_match_pytorch_in_float64_to_bf16_rounding(b, heads, n, length, d):
    q, k, v = _qkv(b, heads, n, length, d, dtype=torch.bfloat16)
    assert sdpa.applies(q, k, v)
    wide = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*wide)
    do = torch.randn(ref.shape, dtype=torch.float64).bfloat16()
    ref_grads = torch.autograd.grad(ref, wide, do.double())
    out = sdpa.attention(q, k, v)
    assert out.dtype == torch.bfloat16 and out.transpose(1, 2).is_contiguous()
    assert _rel(out, ref) < 0.01
    for t, g, r in zip((q, k, v), torch.autograd.grad(out, (q, k, v), do), ref_grads):
        assert g.shape == t.shape and g.dtype == torch.bfloat16
        assert _rel(g, r) < 0.01


@bf16
def test_an_attention_block_under_bf16_autocast_matches_the_explicit_product():
    block = layers.AttentionBlock(64, 8, 32).to(memory_format=torch.channels_last)
    torch.nn.init.normal_(block.proj.weight, std=0.1)
    x = torch.randn(2, 64, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    grads = []
    for enabled in (True, False):
        with torch.enable_grad() if enabled else sdpa.disabled(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
        grads.append((y, *torch.autograd.grad(y.float().square().sum(), (x, block.qkv.weight))))
    for a, b in zip(*grads):
        assert _rel(a, b) < 0.02


def test_a_gradient_of_any_layout():
    q, k, v = _qkv(2, 2, 16, 16, 16)
    out = sdpa.attention(q, k, v)
    do = torch.randn(2, 16, 16, 2).permute(0, 3, 1, 2)            # its last dimension not contiguous
    wide = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_grads = torch.autograd.grad(F.scaled_dot_product_attention(*wide), wide, do.double())
    for g, r in zip(torch.autograd.grad(out, (q, k, v), do), ref_grads):
        assert _rel(g, r) < 1e-6


def test_an_attention_block_trains_the_same_with_and_without_the_kernels():
    block = layers.AttentionBlock(64, 8, 32).to(memory_format=torch.channels_last)
    torch.nn.init.normal_(block.proj.weight, std=0.1)               # zero-initialised: no gradient would reach qkv
    x = torch.randn(2, 64, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    grads = []
    for enabled in (True, False):
        ctx = torch.enable_grad() if enabled else sdpa.disabled()
        with ctx:
            y = block(x)
            grads.append((y, *torch.autograd.grad(y.square().sum(), (x, block.qkv.weight, block.proj.weight))))
    for a, b in zip(*grads):
        assert _rel(a, b) < 1e-5


def test_layers_attention_takes_the_kernels_without_calling_pytorchs(monkeypatch):
    calls, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _qkv(2, 2, 16, 16, 16)
    torch.testing.assert_close(layers.attention(q, k, v), real(q, k, v), atol=1e-5, rtol=1e-5)
    assert not calls
    with torch.autocast("cpu", dtype=torch.bfloat16):             # autocast keeps its own paths
        layers.attention(q, k, v)
    with sdpa.disabled():
        layers.attention(q, k, v)
    assert len(calls) == 2


@pytest.mark.parametrize("case", ["mask", "float64", "fp32 under autocast", "bf16 queries not whole vectors",
                                  "bf16 odd strides", "keys not whole vectors", "d not whole vectors",
                                  "strided rows", "too many scores to keep", "disabled"])
def test_other_calls_take_pytorchs(case):
    q, k, v = _qkv(1, 2, 16, 16, 16)
    mask = None
    if case == "mask":
        mask = torch.ones(1, 1, 1, 16, dtype=torch.bool)
    if case == "float64":
        q, k, v = (t.double() for t in (q, k, v))
    if case == "fp32 under autocast":                             # autocast runs its own bf16 products
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not sdpa.applies(q, k, v)
        return
    if case == "bf16 queries not whole vectors":
        q, k, v = _qkv(1, 2, 24, 16, 16, dtype=torch.bfloat16)
    if case == "bf16 odd strides":                                # read as 32-bit pairs
        q, k, v = (t.detach().bfloat16() for t in (q, k, v))
        q = torch.empty(1, 16, 2 * 16 + 1, dtype=torch.bfloat16)[..., :32].reshape(1, 16, 2, 16).transpose(1, 2)
    if case == "keys not whole vectors":
        q, k, v = _qkv(1, 2, 16, 12, 16)
    if case == "d not whole vectors":
        q, k, v = _qkv(1, 2, 16, 16, 12)
    if case == "strided rows":
        q = q.detach().transpose(2, 3).contiguous().transpose(2, 3)
    if case == "too many scores to keep":
        q, k, v = _qkv(1, 1, 16, sdpa.TRAIN_SCORES // 16 + 16, 16)
        with torch.no_grad():                                     # without gradients nothing is kept
            assert sdpa.applies(q, k, v)
    if case == "disabled":
        with sdpa.disabled():
            assert not sdpa.applies(q, k, v)
        assert sdpa.applies(q, k, v)                              # and back on after the block
        return
    assert not sdpa.applies(q, k, v, mask)
