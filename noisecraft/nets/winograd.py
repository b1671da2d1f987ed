"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016, "Fast Algorithms
for Convolutional Neural Networks", §4): each 4x4 block of outputs comes from a 6x6 tile of input as

    Y = A^T [ (G g G^T) * (B^T d B) ] A

with 36 multiplications per input channel and output channel instead of the direct method's 144. The
elementwise product over a tile is, summed over input channels, 36 independent matrix products
(tiles x C_in) @ (C_in x C_out): one batched GEMM that does a quarter of the direct convolution's
multiplications. The transforms B, G, A are fixed small matrices.

Used for fp32 inference on the CPU (see Conv3x3 below), where the convolutions are already near the
machine's FLOP ceiling and fewer multiplications is what is left to gain. The result equals the direct
convolution to about 1e-5 relative error (tests/nets/test_winograd.py). Training keeps the direct
convolution: its backward pass through the tile transforms is slower than oneDNN's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# F(4x4, 3x3) with interpolation points 0, +-1, +-2 and infinity (Lavin & Gray 2016, eq. 11 and 12).
B_T = torch.tensor([[4, 0, -5, 0, 1, 0],
                    [0, -4, -4, 1, 1, 0],
                    [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0],
                    [0, 2, -1, -2, 1, 0],
                    [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
G = torch.tensor([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], dtype=torch.float64)
A_T = torch.tensor([[1, 1, 1, 1, 1, 0],
                    [0, 1, -1, 2, -2, 0],
                    [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)

TILE, OUT = 6, 4            # input tile and output block sizes of F(4x4, 3x3)
MAX_TILE_BYTES = 8 << 20    # images per chunk keep the transformed tiles near this size (cache-sized)
MIN_CHANNELS = 128          # narrower convolutions are faster direct (benchmarks/speed.py, docs/benchmarks.md)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) kernels -> (36, C_in, C_out): U = G g G^T for every channel pair, in float64
    and then rounded once."""
    u = torch.einsum("ij,ocjk,lk->ilco", G, weight.double(), G)
    return u.reshape(TILE * TILE, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _conv_chunk(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """The convolution of a few images, as (N, H/4, 4, W/4, 4, C_out) blocks, written into `out` if given."""
    n, c, h, w = x.shape
    th, tw = h // OUT, w // OUT
    p, c_out = n * th * tw, u.shape[-1]
    bt, at = B_T.to(x.dtype), A_T.to(x.dtype)
    # d[j, k, n, th, tw, c]: the 6x6 tile (overlapping by 2) of every 4x4 output block, channels last.
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)                            # (N, H+2, W+2, C)
    d = padded.unfold(1, TILE, OUT).unfold(2, TILE, OUT).permute(4, 5, 0, 1, 2, 3).reshape(TILE, -1)
    v = torch.matmul(bt, (bt @ d).view(TILE, TILE, p * c)).view(TILE * TILE, p, c)  # B^T d B
    m = torch.bmm(v, u)                                                             # (36, P, C_out)
    y = torch.matmul(at, (at @ m.view(TILE, -1)).view(OUT, TILE, p * c_out))      # A^T m A
    y = y.view(OUT, OUT, n, th, tw, c_out).permute(2, 3, 0, 4, 1, 5)             # (N, th, 4, tw, 4, C_out)
    if out is None:                         # with autograd
        return (y if bias is None else y + bias).contiguous()
    return torch.add(y, 0 if bias is None else bias, out=out)   # one pass: blocks in place, bias added


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1) for u = transform_weight(weight); H and W multiples of 4.
    The result is channels_last. Large batches go in chunks, so the tiles stay in cache."""
    n, c, h, w = x.shape
    if h % OUT or w % OUT:
        raise ValueError(f"conv3x3 needs H and W divisible by {OUT}, got {h}x{w}")
    c_out = u.shape[-1]
    per_image = TILE * TILE * (h // OUT) * (w // OUT) * max(c, c_out) * x.element_size()
    step = max(1, MAX_TILE_BYTES // per_image)
    if torch.is_grad_enabled() and (x.requires_grad or u.requires_grad):
        out = torch.cat([_conv_chunk(x[i:i + step], u, bias) for i in range(0, n, step)])
    else:
        out = torch.empty(n, h // OUT, OUT, w // OUT, OUT, c_out, dtype=x.dtype, device=x.device)
        for i in range(0, n, step):
            _conv_chunk(x[i:i + step], u, bias, out[i:i + step])
    return out.view(n, h, w, c_out).permute(0, 3, 1, 2)                            # NCHW, channels_last


def eligible(conv: nn.Conv2d) -> bool:
    """The convolutions F(4x4, 3x3) computes: 3x3, stride 1, padding 1, no dilation or groups."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


class Conv3x3(nn.Conv2d):
    """An nn.Conv2d (same parameters and state_dict) that runs by Winograd F(4x4, 3x3) where that is
    faster: fp32 on the CPU without gradients, H and W divisible by 4, and `winograd` set (by default
    when both channel counts are at least MIN_CHANNELS; speed_up clears it for torch.compile). The
    transformed kernels are cached and recomputed when the weights change (an optimizer step, EMA
    weights copied in)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__(in_channels, out_channels, 3, padding=1, **kwargs)
        self.winograd = min(in_channels, out_channels) >= MIN_CHANNELS
        self._cached: tuple[tuple, torch.Tensor] | None = None

    def _u(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version, self.weight.dtype)
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                self._cached = (key, transform_weight(self.weight))
        return self._cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.winograd and not torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype == self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and x.shape[-1] % OUT == 0 and x.shape[-2] % OUT == 0):
            return conv3x3(x, self._u(), self.bias)
        return super().forward(x)
