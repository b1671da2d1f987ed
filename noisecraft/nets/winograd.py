"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016), for the CPU in fp32 and bf16:
4x fewer multiplications than the direct convolution, which oneDNN already runs at 60-75% of the machine's
peak (benchmarks/speed.py), so that no other lever makes fp32 much faster.

Over 6x6 input tiles d (stride 4) and a 3x3 filter g, one 4x4 output tile is

    Y = A^T [ U (.) V ] A,    U = G g G^T,    V = B^T d B,

and summing over input channels turns the elementwise products into 36 matrix products, one per tile
position a: M[a] = V[a] @ U[a], V[a] (tiles x C_in), U[a] (C_in x C_out). winograd.c does every step for
a block of 24 tiles at a time, so that V and M never leave the core's cache (done as separate passes, the
transforms were memory-bound and ate the gain). It is compiled on first use with the machine's C compiler
(-march=native) into ~/.cache/noisecraft and called through ctypes. The gradients are the exact adjoints
of the same steps: dX is the convolution of dY with the flipped, transposed filters (the same kernel),
and dW = G^T dU G with dU[a] = sum over tiles of V[a]^T (A dY A^T)[a].

The fast path runs where it measured faster than PyTorch's convolution: CPU tensors in channels_last (the
UNet's layout), channel counts that are multiples of 16, and at least MIN_TILES tiles per call. In fp32 the
results agree with F.conv2d to fp32 rounding: 1e-6 - 4e-6 of the output's scale per layer
(tests/nets/test_winograd.py).

Under CPU bf16 autocast, on a CPU with AVX-512 BF16, the products run in bf16 (vdpbf16ps: twice the fp32
FMA's multiplications per instruction, summed in fp32): the weights and bias are rounded to bf16 as
autocast rounds them, the transformed tiles and filters are rounded to bf16, and the transforms, sums
and bias stay fp32; the output is bf16, as autocast's convolution gives it. Rounding the transformed
values costs more than rounding the inputs of a direct convolution: 1.6-1.7% relative RMS per layer
against 0.3%, because the output transform's constants (up to 8) amplify it. Everything else -- GPUs,
torch.compile under bf16, a machine without a C compiler -- takes the ordinary F.conv2d.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The compiled kernels: these 3x3 convolutions, GroupNorm + SiLU (norm_act.c, noisecraft/nets/norm_act.py) and
# fp32 attention (sdpa.c, noisecraft/nets/sdpa.py), built into one library.
SOURCES = tuple(Path(__file__).with_name(name) for name in ("winograd.c", "norm_act.c", "sdpa.c", "kernels.h"))
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
MIN_TILES = 16               # below this many 4x4 tiles per call, oneDNN's direct convolution was faster
CACHE_BELOW_TILES = 256      # with fewer tiles, the filter transform costs over ~2% of a call: keep it
CHANNEL_MULTIPLE = 16        # input and output channels: whole vectors of the widest SIMD (AVX-512)
HALF_INPUTS = (torch.float32, torch.bfloat16)   # what the bf16 path reads and writes
NO_BF16 = "the Winograd kernels were built without bf16 products (this CPU has no AVX-512 BF16)"

_state = {"lib": None, "tried": False, "enabled": True}
_build_lock = threading.Lock()


# -- the compiled kernels --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "noisecraft"


def machine_key() -> str:
    """What the compiled library depends on: the source, the flags and the CPU (-march=native)."""
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    key = b"".join(p.read_bytes() for p in SOURCES) + " ".join(CFLAGS).encode() + platform.machine().encode() + cpu.encode()
    return hashlib.sha256(key).hexdigest()[:16]


def build(target: Path) -> None:
    """Compile the kernels into `target`, atomically (a half-written library is never left there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        cc = os.environ.get("CC", "cc")
        sources = [str(p) for p in SOURCES if p.suffix == ".c"]
        subprocess.run([cc, *CFLAGS, *sources, "-o", tmp], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where they cannot be built (then a one-line warning,
    once, and every convolution takes PyTorch's path)."""
    with _build_lock:
        if not _state["tried"]:
            _state["tried"] = True
            _state["lib"] = load()
    return _state["lib"]


def load() -> ctypes.CDLL | None:
    target = cache_dir() / f"winograd-{machine_key()}.so"
    try:
        if not target.exists():
            build(target)
        try:
            lib = ctypes.CDLL(str(target))
        except OSError:                      # a damaged cached library: build it again, once
            build(target)
            lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        stderr = (getattr(e, "stderr", None) or b"").decode(errors="replace").strip().splitlines()
        reason = stderr[-1] if stderr else e
        warnings.warn(f"noisecraft: the Winograd convolution kernels could not be built ({reason}); 3x3 "
                      "convolutions use PyTorch's, slower in fp32 on the CPU", RuntimeWarning, stacklevel=3)
        return None
    long, ptr, flag = ctypes.c_long, ctypes.c_void_p, ctypes.c_int
    lib.winograd_conv.argtypes = [ptr, ptr, ptr, ptr] + [long] * 5
    lib.winograd_conv_bf16.argtypes = [ptr, flag, ptr, ptr, ptr, flag] + [long] * 5
    lib.winograd_filter_grad.argtypes = [ptr, flag, ptr, flag, flag, ptr] + [long] * 5
    lib.winograd_filter.argtypes = [ptr] + [long] * 4 + [flag, flag, ptr, long, long]
    lib.winograd_filter_adjoint.argtypes = [ptr, ptr, long, long]
    lib.winograd_pack_bf16.argtypes = [ptr, ptr, long, long]
    lib.winograd_has_bf16.argtypes = []
    dbl = ctypes.c_double
    lib.norm_act_forward.argtypes = [ptr, flag] + [long] * 4 + [dbl] + [ptr] * 4 + [flag, ptr, flag, ptr, ptr]
    lib.norm_act_apply.argtypes = [ptr, flag] + [long] * 4 + [ptr] * 6 + [flag, ptr, flag, ptr]
    lib.norm_act_backward.argtypes = ([ptr, flag, ptr, flag] + [long] * 4 + [ptr] * 6 + [flag, ptr, ptr, flag]
                                      + [ptr] * 4)
    strides = ctypes.POINTER(long)
    lib.sdpa_forward.argtypes = [ptr, strides] * 4 + [ptr] + [long] * 5 + [ctypes.c_float]
    lib.sdpa_backward.argtypes = ([ptr, strides] * 4 + [ptr] + [ptr, strides] * 4 + [long] * 5
                                  + [ctypes.c_float])
    lib.sdpa_forward_bf16.argtypes = lib.sdpa_forward.argtypes
    lib.sdpa_backward_bf16.argtypes = lib.sdpa_backward.argtypes
    lib.sdpa_vector_floats.argtypes, lib.sdpa_vector_floats.restype = [], long
    return lib


def has_bf16() -> bool:
    """Whether the kernels were built with the bf16 products (a CPU with AVX-512 BF16)."""
    lib = library()
    return lib is not None and bool(lib.winograd_has_bf16())


@contextlib.contextmanager
def disabled():
    """Run 3x3 convolutions on PyTorch's path inside the block, process-wide (e.g. to count their FLOPs as
    convolutions, or to time the direct path)."""
    before, _state["enabled"] = _state["enabled"], False
    try:
        yield
    finally:
        _state["enabled"] = before


def tiles(n: int, h: int, w: int) -> int:
    return n * ((h + 3) // 4) * ((w + 3) // 4)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def filter_transform(weight: torch.Tensor, flipped: bool = False, round_bf16: bool = False) -> torch.Tensor:
    """(O, C, 3, 3) -> U (36, C, O): G g G^T for every filter g, in fp32, read in the weight's own layout. With
    `flipped`, the filters of the input gradient, weight.flip(2, 3).transpose(0, 1) -> U (36, O, C), without
    making that tensor; with `round_bf16`, of the weights rounded to bf16 (as autocast rounds them)."""
    w = weight.detach()
    if w.dtype != torch.float32:
        w = w.float()
    if flipped:
        w = w.transpose(0, 1)                                   # a view: the kernel flips as it reads
    o, c = w.shape[:2]
    u = torch.empty(36, c, o)
    library().winograd_filter(w.data_ptr(), *w.stride(), flipped, round_bf16, u.data_ptr(), c, o)
    return u


def filter_transform_bf16(weight: torch.Tensor, flipped: bool = False) -> torch.Tensor:
    """(O, C, 3, 3) -> U (36, C/2, O, 2) in bf16: G g G^T of the weights rounded to bf16 (as autocast rounds
    them, so that fp32 weights and cast_once's bf16 copy give the same U), computed in fp32, rounded, and laid
    out with each output channel's weights for input channels 2k and 2k+1 side by side (the products' layout);
    `flipped` as in filter_transform()."""
    u = filter_transform(weight, flipped, round_bf16=True)
    c, o = u.shape[1:]
    packed = torch.empty(36, c // 2, o, 2, dtype=torch.bfloat16)
    library().winograd_pack_bf16(u.data_ptr(), packed.data_ptr(), c, o)
    return packed


def filter_adjoint(du: torch.Tensor) -> torch.Tensor:
    """dU (36, C, O) -> dW (O, C, 3, 3) = G^T dU G for every filter."""
    c, o = du.shape[1:]
    du, dw = du.contiguous(), torch.empty(o, c, 3, 3)
    library().winograd_filter_adjoint(du.data_ptr(), dw.data_ptr(), c, o)
    return dw


def convolve(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(N, C, H, W) channels_last and U (36, C, O) -> (N, O, H, W) channels_last: the convolution, all steps
    fused per block of tiles."""
    n, c, h, w = x.shape
    if not (x.is_contiguous(memory_format=torch.channels_last) and u.is_contiguous() and u.shape[:2] == (36, c)
            and x.dtype == u.dtype == torch.float32 and u.shape[2] % CHANNEL_MULTIPLE == 0
            and u.data_ptr() % 64 == 0):       # the kernel loads U in whole, aligned vectors
        raise ValueError(f"convolve() takes a channels_last fp32 (N, C, H, W) and a 64-byte aligned (36, C, O) U, "
                         f"O a multiple of {CHANNEL_MULTIPLE}: got {tuple(x.shape)} {x.dtype} and {tuple(u.shape)}")
    y = torch.empty(n, u.shape[2], h, w, memory_format=torch.channels_last)
    library().winograd_conv(x.data_ptr(), u.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
                            n, h, w, c, u.shape[2])
    return y


def convolve_bf16(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """convolve() with bf16 products: x (N, C, H, W) channels_last in fp32 or bf16, U (36, C/2, O, 2) from
    filter_transform_bf16, an fp32 bias; the transforms and sums run in fp32, the output is out_dtype."""
    n, c, h, w = x.shape
    if not (x.is_contiguous(memory_format=torch.channels_last) and x.dtype in HALF_INPUTS and u.is_contiguous()
            and u.dtype == torch.bfloat16 and u.shape[:2] == (36, c // 2) and u.shape[3] == 2 and c % 2 == 0
            and u.shape[2] % CHANNEL_MULTIPLE == 0 and u.data_ptr() % 64 == 0 and out_dtype in HALF_INPUTS
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))):
        raise ValueError(f"convolve_bf16() takes a channels_last fp32 or bf16 (N, C, H, W), a 64-byte aligned bf16 "
                         f"(36, C/2, O, 2) U, O a multiple of {CHANNEL_MULTIPLE}, and an fp32 bias: got "
                         f"{tuple(x.shape)} {x.dtype} and {tuple(u.shape)} {u.dtype}")
    o = u.shape[2]
    y = torch.empty(n, o, h, w, dtype=out_dtype, memory_format=torch.channels_last)
    done = library().winograd_conv_bf16(x.data_ptr(), x.dtype == torch.bfloat16, u.data_ptr(),
                                        None if bias is None else bias.data_ptr(), y.data_ptr(),
                                        out_dtype == torch.bfloat16, n, h, w, c, o)
    if not done:
        raise RuntimeError(NO_BF16)
    return y


def filter_grad(x: torch.Tensor, dy: torch.Tensor, bf16_products: bool = False) -> torch.Tensor:
    """dU (36, C, O) = sum over tiles of V[a]^T (A dY A^T)[a]: the gradient of U, from the layer's input and
    output gradient (both channels_last, each fp32 or bf16), fused per block of tiles like convolve(); the
    transforms and sums in fp32, the products in fp32 or, with bf16_products, of the transforms rounded to bf16."""
    n, c, h, w = x.shape
    if not (x.is_contiguous(memory_format=torch.channels_last) and dy.is_contiguous(memory_format=torch.channels_last)
            and x.dtype in HALF_INPUTS and dy.dtype in HALF_INPUTS and c % CHANNEL_MULTIPLE == 0
            and dy.shape[1] % CHANNEL_MULTIPLE == 0 and dy.shape[::2] == x.shape[::2] and dy.shape[3] == w):
        raise ValueError(f"filter_grad() takes channels_last fp32 or bf16 x and dY of one image size, channels "
                         f"multiples of {CHANNEL_MULTIPLE}: got {tuple(x.shape)} and {tuple(dy.shape)}")
    du = torch.empty(36, c, dy.shape[1])
    if not library().winograd_filter_grad(x.data_ptr(), x.dtype == torch.bfloat16, dy.data_ptr(),
                                          dy.dtype == torch.bfloat16, bf16_products, du.data_ptr(), n, h, w, c,
                                          dy.shape[1]):
        raise RuntimeError(NO_BF16)
    return du


# -- the kernels as torch operators, with their gradients: what training and torch.compile call ------------------
@torch.library.custom_op("noisecraft::winograd_conv3x3", mutates_args=())
def conv3x3_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) on the Winograd path; the gradients are the adjoint steps (dX: the
    same convolution of dY with the flipped, transposed filters; dW: weight_grad_op)."""
    return convolve(channels_last(x), filter_transform(weight), None if bias is None else bias.contiguous())


@conv3x3_op.register_fake
def _(x, weight, bias):
    return torch.empty(x.shape[0], weight.shape[0], *x.shape[2:], dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("noisecraft::winograd_conv3x3_weight_grad", mutates_args=())
def weight_grad_op(x: torch.Tensor, dy: torch.Tensor, bf16_products: bool) -> torch.Tensor:
    """dW = G^T dU G, dU[a] = sum over tiles of V[a]^T (A dY A^T)[a] (filter_grad), in fp32."""
    return filter_adjoint(filter_grad(channels_last(x), channels_last(dy), bf16_products))


@weight_grad_op.register_fake
def _(x, dy, bf16_products):
    return torch.empty(dy.shape[1], x.shape[1], 3, 3, dtype=torch.float32, device=x.device)


@torch.library.custom_op("noisecraft::winograd_conv3x3_input_grad", mutates_args=())
def input_grad_op(dy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dX of conv3x3_op: the same convolution of dY with the flipped, transposed filters."""
    return convolve(channels_last(dy), filter_transform(weight, flipped=True), None)


@input_grad_op.register_fake
def _(dy, weight):
    return torch.empty(dy.shape[0], weight.shape[1], *dy.shape[2:], dtype=dy.dtype, device=dy.device,
                       memory_format=torch.channels_last)


def _op_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.has_bias = inputs[2] is not None


def _op_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dy = channels_last(dy)           # once for both gradients (a slice of a concatenation's gradient is neither layout)
    dx = input_grad_op(dy, weight) if ctx.needs_input_grad[0] else None
    dw = weight_grad_op(x, dy, False) if ctx.needs_input_grad[1] else None
    db = dy.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db


conv3x3_op.register_autograd(_op_backward, setup_context=_op_setup)


def rounded_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as the bf16 path adds it: rounded to bf16 as autocast rounds it, added in fp32."""
    return None if bias is None else bias.detach().bfloat16().float()


@torch.library.custom_op("noisecraft::winograd_conv3x3_bf16", mutates_args=())
def conv3x3_bf16_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bf16_out: bool) -> torch.Tensor:
    """conv3x3_op with bf16 products (convolve_bf16); the output is bf16 (as autocast's convolution) where
    bf16_out, else fp32. The gradients: dX by the same kernel, in x's dtype; dW summed in fp32."""
    return convolve_bf16(channels_last(x), filter_transform_bf16(weight), rounded_bias(bias),
                         torch.bfloat16 if bf16_out else torch.float32)


@conv3x3_bf16_op.register_fake
def _(x, weight, bias, bf16_out):
    return torch.empty(x.shape[0], weight.shape[0], *x.shape[2:], dtype=torch.bfloat16 if bf16_out else torch.float32,
                       device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("noisecraft::winograd_conv3x3_bf16_input_grad", mutates_args=())
def input_grad_bf16_op(dy: torch.Tensor, weight: torch.Tensor, bf16_out: bool) -> torch.Tensor:
    """dX of conv3x3_bf16_op, by the same kernel, in bf16 where bf16_out, else fp32."""
    return convolve_bf16(channels_last(dy), filter_transform_bf16(weight, flipped=True), None,
                         torch.bfloat16 if bf16_out else torch.float32)


@input_grad_bf16_op.register_fake
def _(dy, weight, bf16_out):
    return torch.empty(dy.shape[0], weight.shape[1], *dy.shape[2:], dtype=torch.bfloat16 if bf16_out else torch.float32,
                       device=dy.device, memory_format=torch.channels_last)


def _bf16_op_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dy = channels_last(dy)
    dx = input_grad_bf16_op(dy, weight, x.dtype == torch.bfloat16) if ctx.needs_input_grad[0] else None
    dw = weight_grad_op(x, dy, True).to(weight.dtype) if ctx.needs_input_grad[1] else None
    # The bias gradient summed in fp32 and rounded to bf16, as autocast's convolution gives it (asking sum() for
    # an fp32 result converts all of dY first: 10% of a bf16 training step).
    db = dy.sum((0, 2, 3)).float() if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db, None


conv3x3_bf16_op.register_autograd(_bf16_op_backward, setup_context=_op_setup)


def _shape_fits(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    c_out, c_in = conv.weight.shape[:2]
    return (_state["enabled"] and x.device.type == "cpu" and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and c_in % CHANNEL_MULTIPLE == 0 and c_out % CHANNEL_MULTIPLE == 0
            and tiles(x.shape[0], x.shape[2], x.shape[3]) >= MIN_TILES
            and (_state["lib"] is not None if torch.compiler.is_compiling() else library() is not None))


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether the fp32 fast path runs this call (see the module's docstring)."""
    return (x.dtype == conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and _shape_fits(conv, x))


def applies_bf16(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether the bf16 fast path runs this call: eager, under CPU bf16 autocast, with the bf16 products built
    (a compiled graph keeps inductor's own bf16 convolutions)."""
    return (not torch.compiler.is_compiling() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in HALF_INPUTS
            and conv.weight.dtype in HALF_INPUTS and _shape_fits(conv, x) and has_bf16())


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(in, out, 3, padding=1) -- the same parameters and state_dict -- that runs on the Winograd
    path where that is faster. Without gradients and at small batches (fewer than CACHE_BELOW_TILES tiles;
    a batch-1 forward ran 1.3x faster with it), the transformed filters, 4x the weight's size, are kept
    from call to call until the weight changes: in place (its version), or replaced."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)
        self._filters: tuple = (None, None)

    def __getstate__(self):                    # copies and pickles start without the cache (a weak reference)
        return {**self.__dict__, "_filters": (None, None)}

    def transformed(self, n_tiles: int, transform=filter_transform) -> torch.Tensor:
        if n_tiles >= CACHE_BELOW_TILES:
            return transform(self.weight)
        w = self.weight
        key, u = self._filters
        if key is None or key[0]() is not w or key[1:] != (w.data_ptr(), w._version, transform):
            u = transform(w)
            self._filters = ((weakref.ref(w), w.data_ptr(), w._version, transform), u)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = applies_bf16(self, x)
        if not (half or applies(self, x)):
            return F.conv2d(x, self.weight, self.bias, padding=1)
        training = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if half and training:                                       # the filters transformed inside, every call
            return conv3x3_bf16_op(x, self.weight, self.bias, True)
        if training or torch.compiler.is_compiling():
            return conv3x3_op(x, self.weight, self.bias)
        n_tiles = tiles(x.shape[0], x.shape[2], x.shape[3])
        if half:
            return convolve_bf16(x, self.transformed(n_tiles, filter_transform_bf16), rounded_bias(self.bias),
                                 torch.bfloat16)
        return convolve(x, self.transformed(n_tiles), None if self.bias is None else self.bias.detach())
