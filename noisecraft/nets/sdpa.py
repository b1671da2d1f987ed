"""softmax(q k^T / sqrt(d)) v -- layers.attention() -- by a compiled kernel (sdpa.c) for fp32 CPU tensors,
with its gradients.

PyTorch's fp32 attention on the CPU (the fused kernel or the explicit product) multiplies through MKL,
which on an AMD CPU runs its AVX2 code: about 150 GFLOP/s in a training step at the `small` preset's
attention shapes, against 500-600 GFLOP/s for oneDNN's convolutions on the same machine. The kernel does
the products with AVX-512 itself (benchmarks/speed.py times it on and off). In training it keeps the
probabilities for the backward pass, 4 N L bytes per image and head (the fused kernel keeps N floats and
computes the scores again), so it runs there up to TRAIN_SCORES scores per head; without gradients, up to
SCORES. Its output is laid out (B, N, heads, d), the layout that the output projection reads, and returned
as the (B, heads, N, d) view.

The kernels run for fp32 CPU tensors without a mask, whose last dimension is contiguous, with d and L
multiples of the kernel's vector width; everything else -- GPUs, bf16, masks, torch.compile, a machine
without a C compiler -- takes PyTorch's.
"""
from __future__ import annotations

import contextlib
import ctypes

import torch

from noisecraft.nets import winograd

TRAIN_SCORES = 256 * 256     # N x L per head with gradients: 256 KB of kept probabilities
SCORES = 1 << 22             # without: one head's scores per thread, 16 MB
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


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """Whether the kernels run this call (see the module's docstring)."""
    if not (_state["enabled"] and mask is None and not torch.compiler.is_compiling() and q.dim() == 4
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1 for t in (q, k, v))
            and k.shape == v.shape and q.shape[:2] == k.shape[:2] and q.shape[3] == k.shape[3]):
            return False
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    width = _vector_floats()
    return (width > 0 and q.shape[3] % width == 0 and k.shape[2] % width == 0
            and q.shape[2] * k.shape[2] <= (TRAIN_SCORES if grad else SCORES))


def _strides(t: torch.Tensor):
    return (ctypes.c_long * 3)(*t.stride()[:3])


def _empty(b: int, h: int, n: int, d: int) -> torch.Tensor:
    """A (B, heads, N, d) tensor laid out (B, N, heads, d)."""
    return torch.empty(b, n, h, d).transpose(1, 2)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: bool) -> tuple:
    """The output, and the probabilities (B, heads, N, L) where `keep`, else None."""
    b, h, n, d = q.shape
    length = k.shape[2]
    o = _empty(b, h, n, d)
    p = torch.empty(b, h, n, length) if keep else None
    winograd.library().sdpa_forward(q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(),
                                    _strides(v), o.data_ptr(), _strides(o), None if p is None else p.data_ptr(),
                                    b, h, n, length, d, ctypes.c_float(d ** -0.5))
    return o, p


def backward(q, k, v, o, p, do) -> tuple:
    if do.stride(-1) != 1:
        do = do.contiguous()
    b, h, n, d = q.shape
    length = k.shape[2]
    dq, dk, dv = _empty(b, h, n, d), _empty(b, h, length, d), _empty(b, h, length, d)
    winograd.library().sdpa_backward(q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(),
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
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return Attention.apply(q, k, v)
    return forward(q, k, v, keep=False)[0]
