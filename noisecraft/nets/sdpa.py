"""softmax(q k^T / sqrt(d)) v -- layers.attention() -- by compiled kernels (sdpa.c) for CPU tensors in fp32,
and in bf16 where the CPU has AVX-512 BF16, with their gradients.

PyTorch's fp32 attention on the CPU (the fused kernel or the explicit product) multiplies through MKL,
which on an AMD CPU runs its AVX2 code: about 150 GFLOP/s in a training step at the `small` preset's
attention shapes, against 500-600 GFLOP/s for oneDNN's convolutions on the same machine. The kernels do
the products with AVX-512 themselves (benchmarks/speed.py times them on and off). In bf16 the products
multiply bf16 pairs into fp32 sums, the softmax runs in fp32, and the probabilities and their gradient are
rounded to bf16 for the products that follow, as autocast's explicit product rounds them.

In training they keep the probabilities for the backward pass, N L values per image and head in q's dtype
(the fused kernel keeps N floats and computes the scores again), so they run there up to TRAIN_SCORES
scores per head; without gradients, up to SCORES. Their output is laid out (B, N, heads, d), the layout that
the output projection reads, and returned as the (B, heads, N, d) view.

They run for CPU tensors without a mask whose last dimension is contiguous: fp32 outside autocast, with d
and L multiples of the kernel's vector width; bf16, with N, L and d multiples of 16. Everything else --
GPUs, masks, torch.compile, a machine without a C compiler -- takes PyTorch's.
"""
from __future__ import annotations

import contextlib
import ctypes

import torch

from noisecraft.nets import winograd

TRAIN_SCORES = 256 * 256     # N x L per head with gradients: 256 KB of kept fp32 probabilities
SCORES = 1 << 22             # without: one head's scores per thread, 16 MB
BF16_MULTIPLE = 16           # N, L and d in bf16: whole vectors of pairs
_state = {"enabled": True}


@contextlib.contextmanager
def disabled():
    """Run layers.attention() on PyTorch's path inside the block, process-wide (e.g. to compare the two, or
    to count its FLOPs)."""
    before, _state["enabled"] = _state["enabled"], False
    try:
        yield
    finally:
        _state["enabled"] = before


def _vector_floats() -> int:
    lib = winograd.library()
    return 0 if lib is None else lib.sdpa_vector_floats()


def _fits(t: torch.Tensor, dtype: torch.dtype) -> bool:
    pairs = dtype == torch.bfloat16     # read as 32-bit pairs: even strides and an even start
    return (t.device.type == "cpu" and t.dtype == dtype and t.stride(-1) == 1
            and (not pairs or (all(s % 2 == 0 for s in t.stride()[:3]) and t.data_ptr() % 4 == 0)))


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """Whether the kernels run this call (see the module's docstring)."""
    dtype = q.dtype
    if not (_state["enabled"] and mask is None and not torch.compiler.is_compiling() and q.dim() == 4
            and dtype in (torch.float32, torch.bfloat16) and all(_fits(t, dtype) for t in (q, k, v))
            and k.shape == v.shape and q.shape[:2] == k.shape[:2] and q.shape[3] == k.shape[3]):
        return False
    n, length, d = q.shape[2], k.shape[2], q.shape[3]
    if dtype == torch.float32:
        width = _vector_floats()
        sizes = (not torch.is_autocast_enabled("cpu") and width > 0 and d % width == 0 and length % width == 0)
    else:
        sizes = all(m % BF16_MULTIPLE == 0 for m in (n, length, d)) and winograd.has_bf16()
    return sizes and n * length <= (TRAIN_SCORES if _with_grad(q, k, v) else SCORES)


def _with_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))


def _strides(t: torch.Tensor):
    return (ctypes.c_long * 3)(*t.stride()[:3])


def _empty(b: int, h: int, n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """A (B, heads, N, d) tensor laid out (B, N, heads, d)."""
    return torch.empty(b, n, h, d, dtype=dtype).transpose(1, 2)


def _kernel(name: str, dtype: torch.dtype):
    lib = winograd.library()
    return getattr(lib, name + ("_bf16" if dtype == torch.bfloat16 else ""))


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: bool) -> tuple:
    """The output, and the probabilities (B, heads, N, L) where `keep`, else None."""
    b, h, n, d = q.shape
    length = k.shape[2]
    o = _empty(b, h, n, d, q.dtype)
    p = torch.empty(b, h, n, length, dtype=q.dtype) if keep else None
    _kernel("sdpa_forward", q.dtype)(q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(),
                                     _strides(v), o.data_ptr(), _strides(o), None if p is None else p.data_ptr(),
                                     b, h, n, length, d, ctypes.c_float(d ** -0.5))
    return o, p


def backward(q, k, v, o, p, do) -> tuple:
    if do.dtype != q.dtype or not _fits(do, q.dtype):
        do = do.to(q.dtype).contiguous()
    b, h, n, d = q.shape
    length = k.shape[2]
    dq, dk, dv = (_empty(b, h, m, d, q.dtype) for m in (n, length, length))
    _kernel("sdpa_backward", q.dtype)(q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(),
                                      _strides(v), o.data_ptr(), _strides(o), p.data_ptr(), do.data_ptr(),
                                      _strides(do), dq.data_ptr(), _strides(dq), dk.data_ptr(), _strides(dk),
                                      dv.data_ptr(), _strides(dv), b, h, n, length, d, ctypes.c_float(d ** -0.5))
    return dq, dk, dv


class Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        o, p = forward(q, k, v, keep=any(ctx.needs_input_grad))
        ctx.save_for_backward(q, k, v, o, p)
        return o

    @staticmethod
    def backward(ctx, do):
        return backward(*ctx.saved_tensors, do)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """layers.attention() by the kernels (see applies())."""
    if _with_grad(q, k, v):
        return Attention.apply(q, k, v)
    return forward(q, k, v, keep=False)[0]
