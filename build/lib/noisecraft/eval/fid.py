"""FID and KID (through torchmetrics) and precision/recall, from features of real and generated images.

Features are computed once (eval/features.py) and handed to torchmetrics through `Precomputed`, a feature
module that passes them through: the real set's features come from the on-disk cache, and the same features
also serve precision/recall, so no image is encoded twice.

FID (Heusel et al. 2017): ||m_r - m_g||^2 + tr(C_r + C_g - 2 (C_r C_g)^{1/2}) between Gaussians fitted
to the two feature sets. KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets; its expectation is 0 for equal distributions.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from noisecraft.errors import NoisecraftError
from noisecraft.eval.metrics import precision_recall


class Precomputed(nn.Module):
    """torchmetrics' `feature=` module for features computed beforehand: (B, D) in, (B, D) out."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def check_sizes(real: torch.Tensor, fake: torch.Tensor) -> list[str]:
    """Raise for sets too small for any of the metrics; return warnings about reduced reliability."""
    if real.shape[1] != fake.shape[1]:
        raise NoisecraftError(f"feature sizes differ ({real.shape[1]} vs {fake.shape[1]}): use one feature network")
    n, d = min(len(real), len(fake)), real.shape[1]
    if n < 4:
        raise NoisecraftError(f"{n} images are too few to compare distributions: give at least 4 (hundreds for "
                              "meaningful numbers)")
    notes = []
    if n <= d:
        notes.append(f"{n} images are fewer than the {d + 1} needed for a full-rank {d}x{d} feature covariance: FID is "
                     "biased upward and noisier; compare FIDs only at the same n (KID is unbiased at any n)")
    return notes


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets (n_r, D) and (n_g, D)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), reset_real_features=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID mean and standard deviation over `subsets` random subsets of min(subset_size, n / 2) images each.
    Subsets of at most half of each set differ from draw to draw, so the standard deviation says how much the
    estimate moves with the sample; subsets of the whole set would all be the same set, with std 0."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real) // 2, len(fake) // 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):     # torchmetrics draws subsets from the global RNG: make them repeatable
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def compare(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """fid, kid, kid_std, precision, recall (k-NN manifolds, Kynkaenniemi et al. 2019), n_real, n_fake and the
    reliability warnings, for feature sets real (n_r, D) and fake (n_g, D)."""
    notes = check_sizes(real, fake)
    kid_mean, kid_std = kid(real, fake)
    precision, recall = precision_recall(real, fake, k)
    return {"fid": fid(real, fake), "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
            "n_real": len(real), "n_fake": len(fake), "warnings": notes}


def evaluate(images: torch.Tensor, source: str, net, split: str = "train", n: int | None = None,
             domain: bool = True, progress: Callable[[int], None] | None = None,
             on_total: Callable[[int], None] | None = None, log: Callable[[str], None] = lambda _: None) -> dict:
    """Everything `noisecraft eval` reports for generated images (N, C, H, W) in [-1, 1] against `source`'s
    split at the images' size and channels: FID, KID, precision/recall on `net`'s features (a FeatureNet),
    and the domain metrics where the source has a judge. n (default all N) images are drawn from each side;
    progress/on_total/log report the work to a caller that shows it."""
    from noisecraft.eval.domain import domain_metrics, has_domain_metrics
    from noisecraft.eval.features import dataset_features, extract, subset

    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise NoisecraftError(f"images must be square (N, C, S, S), got shape {tuple(images.shape)}")
    if n is not None and n < 1:
        raise NoisecraftError(f"n must be at least 1, got {n}")
    n = len(images) if n is None else min(n, len(images))
    fake_images = images if n == len(images) else images[subset(len(images), n)]
    real = dataset_features(net, source, split, n, images.shape[-1], images.shape[1], progress=progress,
                            on_total=on_total)                      # first: a bad source fails before any work
    if on_total is not None:
        on_total(n)
    fake = extract(net, fake_images, progress=progress)
    result = {**compare(real, fake), "n": n, "feature_network": net.name, "data": source, "split": split,
              "image_size": images.shape[-1]}
    if len(real) < n:
        result["warnings"].append(f"{source} ({split}) has only {len(real)} images to compare with {n}")
    if domain and has_domain_metrics(source):
        result["domain"] = domain_metrics(fake_images, source, log=log)
    return result


def read_images(folder: Path, size: int | None = None) -> torch.Tensor:
    """Every image under `folder` (less a top-level grid.png, the contact sheet `noisecraft sample` writes) as
    (N, C, S, S) in [-1, 1]; a mix of grey and RGB becomes RGB. Images of different sizes are an error unless
    `size` is given (then each is centre-cropped to a square and resized to size x size): a set of mixed sizes
    is usually two runs in one folder, and resizing would add its own blur to what is measured."""
    from PIL import Image

    from noisecraft.data.folder import DECODE_ERRORS, IMAGE_EXTENSIONS, list_images
    from noisecraft.data.transforms import flatten_pil, pil_to_array, resize_square_pil

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise NoisecraftError(f"--images {folder} is not a folder: give the folder holding the generated images")
    files = [p for p in list_images(folder) if p.relative_to(folder) != Path("grid.png")]
    if not files:
        raise NoisecraftError(f"no images found in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}): give the "
                              "folder that `noisecraft sample --out` wrote")
    arrays, kept, bad = [], [], 0
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                img = flatten_pil(img, None)
        except DECODE_ERRORS:
            bad += 1
            continue
        if size is not None:
            img = resize_square_pil(img, size)
        elif arrays and img.size != arrays[0].shape[1::-1]:
            raise NoisecraftError(f"images in {folder} differ in size ({kept[0].relative_to(folder)} is "
                                  f"{arrays[0].shape[1]}x{arrays[0].shape[0]}, {path.relative_to(folder)} is "
                                  f"{img.width}x{img.height}): evaluate one set at a time, or pass --size S to "
                                  "resize all of them to SxS")
        arrays.append(pil_to_array(img))
        kept.append(path)
    if not arrays:
        raise NoisecraftError(f"none of the {len(files)} image files in {folder} could be read: check they are images")
    if bad:
        warnings.warn(f"skipped {bad} unreadable image file(s) in {folder}")
    h, w = arrays[0].shape[:2]
    if h != w:
        raise NoisecraftError(f"images in {folder} are {w}x{h}, not square: pass --size S to centre-crop and resize "
                              "them to SxS")
    c = max(a.shape[2] for a in arrays)
    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1).expand(c, -1, -1) for a in arrays])  # (N, C, S, S)
    return images.float().div_(127.5).sub_(1)
