"""Sample-quality numbers: classifier confidence, class balance, distance to the nearest training image
(to show samples are not copies), and precision/recall of feature sets."""
from __future__ import annotations

import torch

from noisecraft.errors import NoisecraftError


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


def knn_radii(features: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """Distance from each feature vector (n, D) to its k-th nearest neighbour in the same set, itself excluded."""
    radii = []
    for i in range(0, len(features), batch_size):
        d = torch.cdist(features[i:i + batch_size], features)                  # (b, n); the 0 to itself is first
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def manifold_coverage(points: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                      batch_size: int = 1024) -> float:
    """Share of `points` inside the union of balls B(support_j, radii_j): the mean of Kynkaenniemi et al.
    (2019) eq. 1, f(phi, Phi) = 1 if ||phi - phi'|| <= ||phi' - NN_k(phi')|| for some phi' in Phi."""
    inside = [(torch.cdist(points[i:i + batch_size], support) <= radii[None]).any(1)
              for i in range(0, len(points), batch_size)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019, eq. 2) of features fake (n_g, D) against real
    (n_r, D): precision = share of fake samples on the real manifold (quality), recall = share of real samples
    on the fake manifold (coverage); each manifold is the union of balls reaching every sample's k-th neighbour."""
    if min(len(real), len(fake)) <= k:
        raise NoisecraftError(f"precision/recall with k={k} needs more than {k} images in each set")
    real, fake = real.double(), fake.double()
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall
