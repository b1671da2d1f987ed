"""silu(GroupNorm(x) * (1 + scale) + shift) -- layers.norm_act() -- as one compiled kernel per direction
(norm_act.c), for CPU activations in channels_last: what a ResBlock runs before each convolution.

Op by op, the norm, the modulation and SiLU each read and write the whole activation, and their gradients
do again (with norm_conv()'s recomputation, the forward ops run twice in training). The kernels read x
twice and write the activation once going forward, and read x and the gradient twice and write dx once
going back; the statistics are the norm's mean and 1/std per image and group, summed in fp32 over runs of
at most 4,096 pixels and in double across runs. The gradients are the closed forms in norm_act.c. When
norm_conv() computes the activation again for the convolution's backward pass, the sigmoid is kept (fp32,
x's size) until the norm's own backward pass, which follows: a recomputation and a backward pass then
take 20% less time than with the sigmoid computed again (2 CPU cores, batch 32 at 64 x 32 x 32).

Under CPU bf16 autocast the activation is returned in bf16: the convolution that follows reads it in bf16
anyway (autocast's own GroupNorm returns fp32, which the convolution then rounds). Everything else
-- GPUs, torch.compile, a machine without a C compiler, other dtypes -- takes the ops one by one.
"""
from __future__ import annotations

import contextlib

import torch

from noisecraft.nets import winograd

DTYPES = (torch.float32, torch.bfloat16)
_state = {"enabled": True}


@contextlib.contextmanager
def disabled():
    """Run norm_act() op by op inside the block, process-wide (e.g. to compare the two)."""
    before, _state["enabled"] = _state["enabled"], False
    try:
        yield
    finally:
        _state["enabled"] = before


def applies(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int,
            scale: torch.Tensor | None = None) -> bool:
    """Whether the kernels run this call (see the module's docstring)."""
    autocast = torch.is_autocast_enabled("cpu")
    return (_state["enabled"] and not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in DTYPES and x.is_contiguous(memory_format=torch.channels_last)
            and weight is not None and bias is not None and weight.dtype == bias.dtype == torch.float32
            and x.shape[1] % groups == 0 and (scale is None or scale.numel() == x.shape[0] * x.shape[1])
            and (not autocast or torch.get_autocast_dtype("cpu") == torch.bfloat16)
            and winograd.library() is not None)


def _per_image(t: torch.Tensor | None, n: int, c: int) -> torch.Tensor | None:
    return None if t is None else t.detach().reshape(n, c).float().contiguous()


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


class Statistics:
    """One call's inputs and the norm's mean and 1/std, from which activation() computes the output again
    (norm_conv() keeps this instead of the activation for the convolution's backward pass)."""

    def __init__(self, x, weight, bias, scale, shift, groups: int, eps: float, act: bool, out_dtype: torch.dtype):
        n, c = x.shape[:2]
        self.x, self.weight, self.bias = x.detach(), weight.detach().contiguous(), bias.detach().contiguous()
        self.scale, self.shift = _per_image(scale, n, c), _per_image(shift, n, c)
        self.groups, self.eps, self.act, self.out_dtype = groups, eps, act, out_dtype
        self.mean = torch.empty(n, groups)
        self.rstd = torch.empty(n, groups)
        self.sigmoid = None                                  # sigmoid(z), from activation() to backward()

    def _dims(self) -> tuple:
        n, c, h, w = self.x.shape
        return n, h * w, c, self.groups

    def _params(self) -> list:
        return [self.weight.data_ptr(), self.bias.data_ptr(), _ptr(self.scale), _ptr(self.shift), self.act]

    def _empty_like_x(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(self.x.shape, dtype=dtype, memory_format=torch.channels_last)

    def forward(self) -> torch.Tensor:
        a = self._empty_like_x(self.out_dtype)
        winograd.library().norm_act_forward(self.x.data_ptr(), self.x.dtype == torch.bfloat16, *self._dims(),
                                            self.eps, *self._params(), a.data_ptr(), a.dtype == torch.bfloat16,
                                            self.mean.data_ptr(), self.rstd.data_ptr())
        return a

    def activation(self) -> torch.Tensor:
        """The output again, as norm_conv()'s backward pass asks for it just before this norm's: with SiLU, the
        sigmoid is kept for backward() (which then computes no exponential; the same numbers)."""
        a = self._empty_like_x(self.out_dtype)
        self.sigmoid = torch.empty(self.x.numel()) if self.act else None
        winograd.library().norm_act_apply(self.x.data_ptr(), self.x.dtype == torch.bfloat16, *self._dims(),
                                          self.mean.data_ptr(), self.rstd.data_ptr(), *self._params(), a.data_ptr(),
                                          a.dtype == torch.bfloat16, _ptr(self.sigmoid))
        return a

    def backward(self, da: torch.Tensor) -> tuple:
        """dx (x's dtype), dweight, dbias, and dscale and dshift (fp32, (N, C)) or None."""
        da = winograd.channels_last(da)
        if da.dtype not in DTYPES:
            da = da.float()
        n, c = self.x.shape[:2]
        dx = self._empty_like_x(self.x.dtype)
        dw, db = torch.empty(c), torch.empty(c)
        ds = None if self.scale is None else torch.empty(n, c)
        dsh = None if self.shift is None else torch.empty(n, c)
        sigmoid, self.sigmoid = self.sigmoid, None                # freed when this call returns
        winograd.library().norm_act_backward(
            self.x.data_ptr(), self.x.dtype == torch.bfloat16, da.data_ptr(), da.dtype == torch.bfloat16,
            *self._dims(), self.mean.data_ptr(), self.rstd.data_ptr(), *self._params(), _ptr(sigmoid), dx.data_ptr(),
            dx.dtype == torch.bfloat16, dw.data_ptr(), db.data_ptr(), _ptr(ds), _ptr(dsh))
        return dx, dw, db, ds, dsh


def output_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if torch.is_autocast_enabled("cpu") else x.dtype


def norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float,
             scale: torch.Tensor | None = None, shift: torch.Tensor | None = None, act: bool = True) -> torch.Tensor:
    """layers.norm_act() by the kernel, without gradients (see applies())."""
    return Statistics(x, weight, bias, scale, shift, groups, eps, act, output_dtype(x)).forward()


class NormActFunction(torch.autograd.Function):
    """layers.norm_act() by the kernels, with its gradients; `stats` is filled in for norm_conv()."""

    @staticmethod
    def forward(ctx, stats: Statistics, x, weight, bias, scale, shift):
        ctx.stats = stats
        ctx.save_for_backward(x, weight, bias, scale, shift)     # checked by autograd: not changed in place
        return stats.forward()

    @staticmethod
    def backward(ctx, da: torch.Tensor):
        inputs = ctx.saved_tensors                              # raises if one was changed in place
        grads = ctx.stats.backward(da)
        return (None, *(None if g is None or not ctx.needs_input_grad[i + 1] else g.reshape(t.shape).to(t.dtype)
                        for i, (g, t) in enumerate(zip(grads, inputs))))
