"""Building blocks of the UNet: time embedding, residual block, attention, resampling."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from noisecraft.nets import norm_act as kernels
from noisecraft.nets import sdpa
from noisecraft.nets.winograd import Conv3x3


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (fractional) timesteps, Vaswani et al. (2017) §3.5 as used by
    DDPM: [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)). (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                              # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def zero(module: nn.Module) -> nn.Module:
    """Zero-initialised output layers make each residual branch start as the identity
    (Goyal et al. 2017; used by improved-diffusion and EDM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def norm_act(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int, eps: float,
             scale: torch.Tensor | None = None, shift: torch.Tensor | None = None, act: bool = True) -> torch.Tensor:
    """silu(GroupNorm(x) * (1 + scale) + shift): the norm, the optional adaptive scale and shift
    (Dhariwal & Nichol 2021 §3), and SiLU."""
    h = F.group_norm(x, groups, weight, bias, eps)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h) if act else h


class Recomputed:
    """The activation of one norm_conv() call, computed again in the backward pass from the norm's inputs:
    once, with its graph, for both the convolution's gradient (which needs the activation itself) and the
    gradients through the norm (which need the graph). Under the same autocast as the forward pass."""

    def __init__(self, inputs: tuple, groups: int, eps: float, act: bool):
        self.inputs, self.options, self.act, self.graph = inputs, (groups, eps), act, None
        device = inputs[0].device.type
        self.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))

    def compute(self, x, weight, bias, scale, shift) -> torch.Tensor:
        return norm_act(x, weight, bias, *self.options, scale, shift, self.act)

    def activation(self) -> torch.Tensor:
        return self.activation_graph()[1].detach()

    def activation_graph(self) -> tuple[list, torch.Tensor]:
        if self.graph is None:
            device, dtype, enabled = self.autocast
            with torch.enable_grad(), torch.autocast(device, dtype, enabled=enabled):
                leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in self.inputs]
                self.graph = (leaves, self.compute(*leaves))
        return self.graph


class NormAct(torch.autograd.Function):
    """norm_act() that keeps only its inputs for the backward pass (see norm_conv)."""

    @staticmethod
    def forward(ctx, recomputed: Recomputed, *inputs):
        ctx.recomputed = recomputed
        ctx.save_for_backward(*inputs)       # the same tensors recomputed holds; saved so that autograd checks
        return recomputed.compute(*inputs)   # none of them changed in place before the backward pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.saved_tensors                                          # raises if an input was modified in place
        leaves, a = ctx.recomputed.activation_graph()
        ctx.recomputed.graph = None
        wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad and ctx.needs_input_grad[i + 1]]
        grads = dict(zip(wanted, torch.autograd.grad(a, [leaves[i] for i in wanted], grad))) if wanted else {}
        return (None, *(grads.get(i) for i in range(len(leaves))))


def norm_conv(conv: nn.Module, norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
              shift: torch.Tensor | None = None, act: bool = True, dropout: nn.Module | None = None) -> torch.Tensor:
    """conv(dropout(norm_act(x, ...))) with norm's parameters, storing only x for the backward pass.

    Done op by op, GroupNorm, the modulation, SiLU and the convolution each keep a tensor of x's size for their
    gradients: four of the seven a ResBlock keeps, most of a training step's memory. In an eager training pass,
    the activation is instead computed again from x in the backward pass (a GroupNorm and a SiLU, memory-bound,
    a few percent of the convolution's cost); the gradients are the same numbers. On the CPU, in channels_last,
    the norm, the modulation and SiLU run as one compiled kernel each way (noisecraft/nets/norm_act.py: fp32
    rounding apart from the ops), which keeps the norm's statistics for the recomputation. An active dropout
    keeps its output, as before. torch.compile's partitioner makes such choices itself, so compiled graphs run
    the ops."""
    inputs = (x, norm.weight, norm.bias, scale, shift)
    options = (norm.num_groups, norm.eps)
    fused = kernels.applies(x, norm.weight, norm.bias, norm.num_groups, scale)   # one compiled kernel (CPU)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)) \
            or torch.compiler.is_compiling():
        a = (kernels.norm_act if fused else norm_act)(x, norm.weight, norm.bias, *options, scale, shift, act)
        return conv(a if dropout is None else dropout(a))
    if fused:
        recomputed = kernels.Statistics(*inputs, *options, act, kernels.output_dtype(x))
        a = kernels.NormActFunction.apply(recomputed, *inputs)
    else:
        recomputed = Recomputed(inputs, *options, act)
        a = NormAct.apply(recomputed, *inputs)
    b = a if dropout is None else dropout(a)

    key = _identity(a)            # not `a` itself: autograd keeps the pack hook as long as what it saved

    def pack(t: torch.Tensor):
        return recomputed if _identity(t) == key else t

    def unpack(t):
        return t.activation() if t is recomputed else t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return conv(b)


def _identity(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t.shape, t.stride(), t.dtype


class _ConcatChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *xs):
        ctx.sizes = [x.shape[1] for x in xs]
        ctx.formats = [torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else
                       torch.contiguous_format for x in xs]
        return torch.cat(xs, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return tuple(g.contiguous(memory_format=f) for g, f in zip(grad.split(ctx.sizes, dim=1), ctx.formats))


def concat_channels(xs: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(xs, dim=1), whose gradients come back dense, in each input's layout. torch.cat's are slices
    of the output's gradient, in neither layout, and each layer that the gradient reaches made its own dense
    copy (oneDNN's 1x1 convolutions inside, the Winograd and norm kernels before they run): up to three
    copies in the UNet's up path, one here. 1-2% of a training step of `small` (benchmarks/speed.py's)."""
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return torch.cat(xs, dim=1)
    return _ConcatChannels.apply(*xs)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the embedding injected as scale and shift of the second
    norm (adaptive GroupNorm, Dhariwal & Nichol 2021 §3)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = norm(in_ch, groups)
        self.conv1 = Conv3x3(in_ch, out_ch)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero(Conv3x3(out_ch, out_ch))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = norm_conv(self.conv1, self.norm1, x)                            # (B, out, H, W)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = norm_conv(self.conv2, self.norm2, h, scale, shift, dropout=self.dropout)
        return self.skip(x) + h


SCORES_PER_CHUNK = 1 << 20   # attention scores per batch chunk at inference: 4 MB in fp32, cache- and malloc-friendly


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) queries and (B, heads, L, d) keys and values
    (Vaswani et al. 2017, eq. 1); `mask` (B, 1, 1, L) is True where a key may be attended to.

    On the CPU, noisecraft's own kernels (sdpa.py) where they apply. Else PyTorch's fused kernel, except in
    bf16 on the CPU, where the explicit product was faster at these sizes (N x L up to 256 x 256): its backward
    pass 2-4x (benchmarks/speed.py), and at inference 2.3-2.8x (batch 16 and 64, 256 tokens), taken in batch
    chunks of at most SCORES_PER_CHUNK scores; autocast keeps its softmax in fp32."""
    if sdpa.applies(q, k, v, mask):
        return sdpa.attention(q, k, v)
    explicit = q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] * k.shape[-2] <= 256 * 256
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    per = max(1, SCORES_PER_CHUNK // (q.shape[1] * q.shape[2] * k.shape[2]))
    if (torch.is_grad_enabled() and q.requires_grad) or q.shape[0] <= per:
        return _explicit_attention(q, k, v, mask)
    part = lambda t, i: t if t is None or t.shape[0] == 1 else t[i:i + per]       # a mask may broadcast
    return torch.cat([_explicit_attention(part(q, i), part(k, i), part(v, i), part(mask, i))
                      for i in range(0, q.shape[0], per)])


def _explicit_attention(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5                  # (B, heads, N, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, plus cross-attention to a context sequence
    (text token states) when `context_dim` is set (Rombach et al. 2022, §3.3); with
    self_attention=False only the cross-attention (cheap at high resolutions: L keys, not HW)."""

    def __init__(self, channels: int, groups: int, head_dim: int, context_dim: int = 0, self_attention: bool = True):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.self_attention = self_attention
        if self_attention:
            self.norm = norm(channels, groups)
            self.qkv = nn.Conv2d(channels, 3 * channels, 1)
            self.proj = zero(nn.Conv2d(channels, channels, 1))
        self.cross = None
        if context_dim:
            self.cross_norm = norm(channels, groups)
            self.cross_q = nn.Linear(channels, channels)
            self.cross_kv = nn.Linear(context_dim, 2 * channels)
            self.cross = zero(nn.Linear(channels, channels))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)   # (B, heads, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.self_attention:
            qkv = norm_conv(self.qkv, self.norm, x, act=False)                    # (B, 3C, H, W)
            q, k, v = qkv.flatten(2).transpose(1, 2).chunk(3, dim=2)              # 3 x (B, HW, C)
            out = attention(self._heads(q), self._heads(k), self._heads(v))
            x = x + self.proj(out.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w))
        if self.cross is None or context is None:
            return x
        q = self.cross_q(self.cross_norm(x).flatten(2).transpose(1, 2))        # (B, HW, C)
        k, v = self.cross_kv(context).chunk(2, dim=2)                          # (B, L, C) each
        mask = None if context_mask is None else context_mask[:, None, None, :].bool()
        out = attention(self._heads(q), self._heads(k), self._heads(v), mask)
        return x + self.cross(out.transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
