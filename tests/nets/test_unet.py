from dataclasses import replace

import pytest
import torch

from noisecraft import NoisecraftError
from noisecraft.nets import PRESETS, UNet, UNetConfig, get_preset
from noisecraft.nets.layers import AttentionBlock, timestep_embedding


def test_presets_name_their_shape():
    assert {"tiny", "small", "base"} <= set(PRESETS)
    assert (PRESETS["tiny"].image_size, PRESETS["tiny"].in_channels) == (16, 1)
    assert PRESETS["small"].image_size == 32
    assert (PRESETS["base"].image_size, PRESETS["base"].in_channels) == (64, 3)


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_output_has_the_input_shape(name):
    cfg = PRESETS[name]
    net = UNet(cfg)
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    assert net(x, torch.tensor([0.0, 999.0])).shape == x.shape


def _trained_like(cfg):
    """A net whose zero-initialised output layers are perturbed, so inputs actually matter."""
    torch.manual_seed(0)
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_fractional_timesteps_embed_between_their_neighbours():
    emb = timestep_embedding(torch.tensor([10.0, 10.5, 11.0]), 64)
    assert emb.shape == (3, 64)
    assert 0 < (emb[1] - emb[0]).norm() < (emb[2] - emb[0]).norm()
    net = _trained_like(PRESETS["tiny"])
    x = torch.randn(1, 1, 16, 16).repeat(3, 1, 1, 1)
    out = net(x, torch.tensor([100.0, 100.5, 101.0]))
    assert 0 < (out[1] - out[0]).norm() < (out[2] - out[0]).norm() * 1.5


def test_class_conditioning_hook_changes_the_output():
    net = _trained_like(replace(PRESETS["tiny"], num_classes=10))
    x, t = torch.randn(1, 1, 16, 16).repeat(3, 1, 1, 1), torch.full((3,), 500.0)
    out = net(x, t, class_labels=torch.tensor([0, 1, 10]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    torch.testing.assert_close(net(x[:1], t[:1]), out[2:3])  # no label = the null class


def test_text_conditioning_hook_uses_context_and_mask():
    net = _trained_like(replace(PRESETS["tiny"], context_dim=24))
    x, t = torch.randn(1, 1, 16, 16).repeat(2, 1, 1, 1), torch.full((2,), 300.0)
    context = torch.randn(2, 5, 24)
    a = net(x, t, context=context)
    assert not torch.allclose(a[0], a[1])
    masked = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    changed = context.clone()
    changed[0, 2:] = 100.0                                       # masked-out tokens must not matter
    torch.testing.assert_close(net(x, t, context=changed, context_mask=masked)[0],
                               net(x, t, context=context, context_mask=masked)[0])


def _cross_attention_off(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, AttentionBlock) and m.cross is not None:
                m.cross.weight.zero_()
                m.cross.bias.zero_()
    return net


@pytest.mark.parametrize("pooled", [True, False])
def test_without_the_pooled_embedding_the_prompt_acts_only_through_cross_attention(pooled):
    net = _trained_like(replace(PRESETS["tiny"], context_dim=24, pooled_context=pooled))
    assert (net.context_proj is not None) == pooled
    x, t = torch.randn(1, 1, 16, 16).repeat(2, 1, 1, 1), torch.full((2,), 300.0)
    context = torch.randn(2, 5, 24)
    out = _cross_attention_off(net)(x, t, context=context)
    assert torch.allclose(out[0], out[1]) != pooled             # pooled: the mean token state still acts


def test_cross_resolutions_add_cross_attention_only():
    cfg = replace(PRESETS["tiny"], context_dim=24, cross_resolutions=(16,))
    net = _trained_like(cfg)
    cross_only = [m for m in net.modules() if isinstance(m, AttentionBlock) and not m.self_attention]
    assert len(cross_only) == 3                                  # one down level and two up levels at 16x16
    assert all(not hasattr(m, "qkv") and m.cross is not None for m in cross_only)
    x, t, context = torch.randn(2, 1, 16, 16), torch.full((2,), 300.0), torch.randn(2, 5, 24)
    before = net(x, t, context=context)
    with torch.no_grad():
        cross_only[0].cross.weight.add_(1.0)
    assert not torch.allclose(before, net(x, t, context=context))
    # Without a context the option builds nothing, and a config written before these options loads as before.
    assert not any(isinstance(m, AttentionBlock) and not m.self_attention
                   for m in UNet(replace(cfg, context_dim=0)).modules())
    old = {k: v for k, v in PRESETS["shapes"].to_dict().items() if k not in ("pooled_context", "cross_resolutions")}
    assert UNetConfig.from_dict(old) == PRESETS["shapes"]


def test_bad_preset_and_bad_size_are_clear_errors():
    with pytest.raises(NoisecraftError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(NoisecraftError, match="divisible"):
        UNetConfig(image_size=18, channel_mult=(1, 2, 2))


def test_super_resolution_net_sees_the_upsampled_low_res_image():
    cfg = replace(PRESETS["tiny"], low_res_channels=1)
    net = _trained_like(cfg)
    assert net.stem.in_channels == 2                                   # x_t and the upsampled condition, SR3
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10.0, 500.0])
    y = torch.randn(2, 1, 4, 4)
    out = net(x, t, low_res=y)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, low_res=-y))
    # nearest upsampling: a 8x8 input repeating each 4x4 pixel twice is the same condition
    assert torch.allclose(out, net(x, t, low_res=y.repeat_interleave(2, -2).repeat_interleave(2, -1)), atol=1e-6)
    with pytest.raises(NoisecraftError, match="give it the low-res image"):
        net(x, t)
    with pytest.raises(NoisecraftError, match="whole blocks"):
        net(x, t, low_res=torch.randn(2, 1, 5, 5))
