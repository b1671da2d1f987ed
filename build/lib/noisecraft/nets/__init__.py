"""Denoising networks and their presets."""
from noisecraft.nets.presets import PRESETS, UNetConfig, get_preset
from noisecraft.nets.unet import UNet

__all__ = ["PRESETS", "UNet", "UNetConfig", "get_preset"]
