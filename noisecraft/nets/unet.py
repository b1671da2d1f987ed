"""The denoising UNet (Ronneberger et al. 2015, as adapted by Ho et al. 2020 and
Dhariwal & Nichol 2021): noisy image + timestep (+ class or text) in, one image-shaped output."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from noisecraft.errors import NoisecraftError
from noisecraft.nets.layers import (AttentionBlock, Downsample, ResBlock, Upsample, concat_channels, norm, norm_conv,
                                   timestep_embedding, zero)
from noisecraft.nets.presets import UNetConfig
from noisecraft.nets.winograd import Conv3x3


def upsample_condition(low_res: torch.Tensor | None, size: int) -> torch.Tensor:
    """The low-res image at the model's size, each pixel repeated into a block: for box-averaged inputs this
    is the pseudo-inverse of the degradation (box_down(up(y)) = y), so the network sees y itself."""
    if low_res is None:
        raise NoisecraftError("this is a super-resolution model: give it the low-res image (noisecraft upscale, or "
                              "cond={'low_res': y})")
    if size % low_res.shape[-1] or low_res.shape[-1] != low_res.shape[-2]:
        raise NoisecraftError(f"a {tuple(low_res.shape[-2:])} low-res image does not divide the model's {size}x{size} "
                              "output into whole blocks")
    return F.interpolate(low_res, scale_factor=size // low_res.shape[-1], mode="nearest")


def attention_at(cfg: UNetConfig, res: int) -> str | None:
    """The attention of a level at resolution res: "full" (self- and, with a context, cross-attention),
    "cross" (cross-attention only) or None."""
    if res in cfg.attn_resolutions:
        return "full"
    return "cross" if cfg.context_dim and res in cfg.cross_resolutions else None


class Level(nn.Module):
    """A ResBlock optionally followed by attention: the unit repeated along both UNet paths."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, cfg: UNetConfig, attention: str | None):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.groups, cfg.dropout)
        self.attn = None if attention is None else AttentionBlock(
            out_ch, cfg.groups, cfg.head_dim, cfg.context_dim, self_attention=attention == "full")

    def forward(self, x, emb, context=None, context_mask=None):
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context, context_mask)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch, emb_dim = cfg.base_channels, 4 * cfg.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Conditioning hook: a class embedding (plus one "null" row for classifier-free guidance)
        # and a pooled text embedding are added to the time embedding.
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.context_proj = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim and cfg.pooled_context else None

        self.stem = Conv3x3(cfg.in_channels + cfg.low_res_channels, ch)
        self.down = nn.ModuleList()
        skips, res = [ch], cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(Level(ch, cfg.base_channels * mult, emb_dim, cfg, attention_at(cfg, res)))
                ch = cfg.base_channels * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([Level(ch, ch, emb_dim, cfg, "full"), Level(ch, ch, emb_dim, cfg, None)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(Level(ch + skips.pop(), cfg.base_channels * mult, emb_dim, cfg,
                                     attention_at(cfg, res)))
                ch = cfg.base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2
        # norm, SiLU, conv: run by norm_conv() in forward (a Sequential for its state_dict keys, out.0 and out.2)
        self.out = nn.Sequential(norm(ch, cfg.groups), nn.SiLU(), zero(Conv3x3(ch, cfg.in_channels)))
        # NHWC activations and weights: oneDNN's convolutions run 1.1-1.7x faster on CPU than in NCHW
        # (benchmarks/speed.py), and tensor cores prefer it too. Inputs and outputs stay ordinary tensors.
        self.set_memory_format(torch.channels_last)

    def set_memory_format(self, memory_format: torch.memory_format) -> "UNet":
        """Run in channels_last (the default) or contiguous_format; the numbers agree to float rounding."""
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                low_res: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W); t: (B,) float timesteps in [0, T-1]; class_labels: (B,) int64 with
        num_classes meaning "none"; context: (B, L, context_dim) token states, context_mask: (B, L);
        low_res: (B, low_res_channels, H/f, W/f), the image a super-resolution model upsamples."""
        emb = self.time_mlp(timestep_embedding(t.expand(x.shape[0]), self.config.base_channels))  # (B, E)
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.config.num_classes, device=x.device)
            emb = emb + self.class_emb(class_labels)
        if self.context_proj is not None and context is not None:
            m = torch.ones(context.shape[:2], device=x.device) if context_mask is None else context_mask.float()
            pooled = (context * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)  # (B, D)
            emb = emb + self.context_proj(pooled)

        if self.config.low_res_channels:
            x = torch.cat([x, upsample_condition(low_res, x.shape[-1])], dim=1)  # (B, C + C_lr, H, W), SR3 §2.4
        h = self.stem(x.contiguous(memory_format=self.memory_format))        # (B, ch, H, W)
        hs = [h]
        for block in self.down:
            h = block(h) if isinstance(block, Downsample) else block(h, emb, context, context_mask)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb, context, context_mask)
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:                   # the names let go of their tensors early: at inference, the block's reuse their memory
                x = concat_channels([h, hs.pop()])
                del h
                h = block(x, emb, context, context_mask)
                del x
        return norm_conv(self.out[2], self.out[0], h).contiguous()           # (B, C, H, W)
