"""Sample-quality numbers that need no feature network: classifier confidence, class balance,
and distance to the nearest training image (to show samples are not copies)."""
from __future__ import annotations

import torch


def confident_fraction(probs: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of samples whose top class probability is at least `threshold`."""
    return float((probs.max(1).values >= threshold).float().mean())


def class_histogram(probs: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned to each class (argmax)."""
    return torch.bincount(probs.argmax(1), minlength=probs.shape[1]).float() / len(probs)


def tv_to_uniform(hist: torch.Tensor) -> float:
    """Total variation distance 1/2 sum |p_k - 1/K| between a class histogram and uniform."""
    return float(0.5 * (hist - 1.0 / len(hist)).abs().sum())


def nearest_distances(samples: torch.Tensor, reference: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: RMS pixel distance (in [-1, 1] units) to its nearest reference image, and its index."""
    ref = reference.flatten(1).double()
    dists, idxs = [], []
    for i in range(0, len(samples), batch_size):
        d = torch.cdist(samples[i:i + batch_size].flatten(1).double(), ref,
                      compute_mode="donot_use_mm_for_euclid_dist") / ref.shape[1] ** 0.5   # exact 0 for a copy
        v, j = d.min(1)
        dists.append(v)
        idxs.append(j)
    return torch.cat(dists).float(), torch.cat(idxs)
