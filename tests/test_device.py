"""The speed options of noisecraft/device.py and the UNet's memory format: the fast paths compute what
the plain fp32 path computes (fp32 within 1e-4; bf16 within the tolerance docs/benchmarks.md states)."""
import contextlib
import os
import platform
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from noisecraft import NoisecraftError, sample
from noisecraft.device import autocast, check_precision, speed_up
from noisecraft.models import DiffusionModel, ModelConfig
from noisecraft.nets import PRESETS, UNet, winograd

# Relative RMS error of one bf16 forward pass against fp32, as docs/training.md states: 2.6-3.4% measured with the
# bf16 Winograd products (AVX-512 BF16), 1.4-1.6% with oneDNN's direct bf16 convolutions.
BF16_TOLERANCE = 0.05


def _perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers perturbed, so every path through the network matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def _text_unet() -> UNet:
    torch.manual_seed(0)
    return _perturbed(UNet(replace(PRESETS["shapes"], context_dim=16)))


def _inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 3, 32, 32, generator=g), torch.tensor([10.0, 500.5, 999.0])[:batch],
            {"context": torch.randn(batch, 5, 16, generator=g)})


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_unet_runs_channels_last_and_returns_an_ordinary_tensor():
    net = _text_unet()
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, cond = _inputs()
    out = net(x, t, **cond)
    assert out.is_contiguous() and out.shape == x.shape


def test_channels_last_matches_contiguous_format_forward_and_gradients():
    fast, plain = _text_unet(), _text_unet().set_memory_format(torch.contiguous_format)
    assert not plain.stem.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, cond = _inputs()
    a, b = fast(x, t, **cond), plain(x, t, **cond)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_bf16_forward_is_within_the_documented_tolerance_and_returns_fp32():
    model = DiffusionModel(ModelConfig(unet=replace(PRESETS["shapes"], context_dim=16)))
    _perturbed(model.net)
    x, t, cond = _inputs()
    with torch.inference_mode():
        ref = model(x, t, **cond)
        speed_up(model, "bf16")
        out = model(x, t, **cond)
    assert out.dtype == torch.float32
    assert 0 < _rel_rms(out, ref) < BF16_TOLERANCE                 # > 0: bf16 really ran


def test_bf16_sampling_stays_close_to_fp32_sampling():
    torch.manual_seed(0)                                           # the same network whatever ran before
    model = DiffusionModel(ModelConfig(unet=PRESETS["tiny"]))
    _perturbed(model.net)
    model.net.out[-1].weight.data.mul_(0.1)                        # an eps scale a trained model has
    run = lambda: sample(model, (4, 1, 16, 16), sampler="dpmpp_2m", steps=10,
                         generator=torch.Generator().manual_seed(0))
    ref = run()
    speed_up(model, "bf16")
    out = run()
    # Relative RMS, as for one forward pass: the largest single-pixel difference depends on the CPU's bf16
    # kernels (0.14 on an AMD EPYC with avx512_bf16, where the RMS was 0.005).
    assert 0 < _rel_rms(out, ref) < BF16_TOLERANCE


def test_bf16_training_step_gives_fp32_gradients_close_to_fp32():
    x, t, cond = _inputs()
    grads = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = DiffusionModel(ModelConfig(unet=replace(PRESETS["shapes"], context_dim=16)))
        _perturbed(model.net)
        speed_up(model, precision)
        torch.nn.functional.mse_loss(model(x, t, **cond), x).backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert _rel_rms(grads["bf16"], grads["fp32"]) < 5 * BF16_TOLERANCE


def _weight_casts(model: torch.nn.Module, *args, **kwargs) -> int:
    """How many times one forward pass casts one of the model's parameters to another dtype."""
    from torch.utils._python_dispatch import TorchDispatchMode

    params = {p.data_ptr() for p in model.parameters()}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype) and args[0].data_ptr() in params:
                Count.n += 1
            return func(*args, **(kwargs or {}))
    with Count():
        model(*args, **kwargs)
    return Count.n


def test_cast_once_gives_the_same_bf16_output_without_casting_the_weights_at_every_call():
    model = speed_up(DiffusionModel(ModelConfig(unet=replace(PRESETS["shapes"], context_dim=16))), "bf16")
    _perturbed(model.net)
    keys = list(model.state_dict())
    x, t, cond = _inputs()
    with torch.inference_mode():
        ref = model(x, t, **cond)
        assert _weight_casts(model, x, t, **cond) > 20                # autocast casts each conv and linear weight
        with model.cast_once():
            assert _weight_casts(model, x, t, **cond) == 0
            assert torch.equal(model(x, t, **cond), ref)                # bit for bit
            assert list(model.state_dict()) == keys
    assert model.cast_net is None                                     # the copy goes on exit


def test_cast_once_leaves_fp32_and_gradient_recording_alone():
    x, t, cond = _inputs()
    fp32 = _perturbed(DiffusionModel(ModelConfig(unet=PRESETS["tiny"])))
    with fp32.cast_once():
        assert fp32.cast_net is None
    model = speed_up(DiffusionModel(ModelConfig(unet=replace(PRESETS["shapes"], context_dim=16))), "bf16")
    _perturbed(model.net)
    with model.cast_once():
        model(x, t, **cond).square().mean().backward()                # training-style calls use the real weights
    assert all(p.grad is not None for p in model.net.parameters() if p.requires_grad)


def test_bf16_sampling_casts_the_weights_once_per_run_and_sees_changed_weights(monkeypatch):
    import noisecraft.device

    model = speed_up(_perturbed(DiffusionModel(ModelConfig(unet=PRESETS["tiny"]))), "bf16")
    copies = []
    real_copy = noisecraft.device.low_precision_copy
    monkeypatch.setattr(noisecraft.device, "low_precision_copy", lambda net: copies.append(net) or real_copy(net))
    run = lambda: sample(model, (2, 1, 16, 16), sampler="dpmpp_2m", steps=6, generator=torch.Generator().manual_seed(0))
    first = run()
    assert len(copies) == 1
    with torch.no_grad():
        model.net.stem.weight.data.mul_(1.5)                          # .data: no version bump to notice
    second = run()
    assert len(copies) == 2 and not torch.equal(first, second)
    monkeypatch.setattr(model, "cast_once", contextlib.nullcontext)  # the plain path: casts at every call
    assert torch.equal(run(), second)


def test_compiled_unet_matches_eager_and_keeps_its_state_dict_keys(monkeypatch):
    model = DiffusionModel(ModelConfig(unet=PRESETS["tiny"]))
    _perturbed(model.net)
    keys = list(model.state_dict())
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3.0, 700.0])
    with torch.inference_mode():
        ref = model(x, t)
        speed_up(model, "fp32", compile=True)
        calls = []
        real = winograd.convolve
        monkeypatch.setattr(winograd, "convolve", lambda *a: calls.append(1) or real(*a))
        out = model(x, t)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert list(model.state_dict()) == keys
    if winograd.library() is not None:                             # the graph kept the Winograd operators
        assert calls


def test_precision_names_are_checked():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(NoisecraftError, match="--precision"):
        check_precision("fp16")
    with pytest.raises(NoisecraftError, match="--precision"):
        speed_up(DiffusionModel(ModelConfig(unet=PRESETS["tiny"])), "half")
    with autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_a_diffusers_unet_runs_in_bf16_too():
    from diffusers import UNet2DModel

    from noisecraft.diffusion import NoiseSchedule
    from noisecraft.interop import DiffusersUNet

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    model = DiffusersUNet(unet, NoiseSchedule.linear(), "epsilon", ModelConfig(unet=PRESETS["tiny"])).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3.0, 700.0])
    with torch.inference_mode():
        ref = model(x, t)
        out = speed_up(model, "bf16")(x, t)
        with model.cast_once():
            assert _weight_casts(model, x, t) == 0
            assert torch.equal(model(x, t), out)
    assert out.dtype == torch.float32
    assert 0 < _rel_rms(out, ref) < BF16_TOLERANCE


FAULTS_OF_A_FREED_TENSOR = """
import resource, sys, torch
if sys.argv[1] == "kept":
    from noisecraft.device import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():                                         # a 40 MiB tensor, written and freed
    return float(torch.ones(10 << 20)[-1])
for _ in range(3):
    step()
per_step = []
for _ in range(21):
    before = faults()
    step()
    per_step.append(faults() - before)
print(sorted(per_step)[10])                         # the median step: an occasional step whose block went elsewhere
"""                                                 # faults 10240 pages once (seen under pytest: a 20-step mean of 512)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_each_step():
    def faults_per_step(setting):
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_FREED_TENSOR, setting], capture_output=True,
                             text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return float(out.stdout.strip().splitlines()[-1])
    # By default a block over 32 MiB (glibc's largest mmap threshold) is mapped for each tensor and unmapped
    # when it is freed, so each step faults its 10240 pages in again; kept, the heap block is reused.
    assert faults_per_step("default") > 1000
    assert faults_per_step("kept") < 10


def test_the_command_line_keeps_freed_memory(monkeypatch):
    import noisecraft.cli as cli
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == [1]


def test_bf16_instructions_are_read_from_cpuinfo():
    from noisecraft.device import bf16_in_cpuinfo
    assert bf16_in_cpuinfo("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n")
    assert bf16_in_cpuinfo("flags\t\t: avx2 amx_bf16 amx_tile\n")
    assert bf16_in_cpuinfo("Features\t: fp asimd sve bf16 i8mm\n")                      # aarch64
    assert not bf16_in_cpuinfo("flags\t\t: fpu sse2 avx avx2 fma f16c\n")
    assert not bf16_in_cpuinfo("Features\t: fp asimd evtstrm\n")


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch):
    import warnings
    import noisecraft.device as device
    model = DiffusionModel(ModelConfig(unet=PRESETS["tiny"]))
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no bf16 instructions.*--precision fp32"):
        speed_up(model, "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        speed_up(model, "fp32")                                  # fp32 never warns
        monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
        speed_up(model, "bf16")
