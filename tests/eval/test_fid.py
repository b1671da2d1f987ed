"""FID, KID and precision/recall on real features (EfficientNet-Lite0 at 32x32 input, to stay fast) of digits,
and FID against closed forms with the identity as the feature network."""
import math

import pytest
import torch
import torch.nn.functional as F

from noisecraft.data import load_dataset
from noisecraft.errors import NoisecraftError
from noisecraft.eval.analytic import frechet_distance
from noisecraft.eval.features import efficientnet_lite0, extract, subset
from noisecraft.eval.fid import check_sizes, compare, fid, kid
from noisecraft.eval.metrics import precision_recall

N = 300


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", split="all")
    order = subset(len(d.images), len(d.images), seed=1)            # classes mixed into both halves
    return d.images[order], d.labels[order]


@pytest.fixture(scope="module")
def net():
    return efficientnet_lite0(resolution=32)


@pytest.fixture(scope="module")
def halves(digits, net):
    x, _ = digits
    return extract(net, x[:N]), extract(net, x[N:2 * N])


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = (k / k.sum())[:, None] * (k / k.sum())[None, :]
    return F.conv2d(F.pad(x, [3] * 4, mode="replicate"), k[None, None])


def test_fid_of_identity_features_is_the_closed_form_frechet_distance():
    # Stub feature network = identity: torchmetrics' FID must be the Frechet distance of the fitted Gaussians.
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(3000, 4, generator=g, dtype=torch.float64) * 0.7 + 0.3
    assert fid(a, b) == pytest.approx(frechet_distance(b, a.mean(0), torch.cov(a.T)), rel=1e-7)
    # and, for diagonal Gaussians, the population distance |m1 - m2|^2 + sum (s1 - s2)^2 up to sampling error
    s1, s2, m = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.5, 1.0, 1.5]), torch.tensor([1.0, 0.0, -1.0])
    x = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * s1
    y = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * s2 + m
    assert fid(x, y) == pytest.approx(float(m.pow(2).sum() + (s1 - s2).pow(2).sum()), rel=0.01)


def test_fid_near_zero_for_halves_and_rises_with_noise_and_blur(digits, net, halves):
    x, _ = digits
    a, b = halves
    other = x[N:2 * N]
    g = torch.Generator().manual_seed(0)
    same = fid(a, b)
    noisy = [fid(a, extract(net, (other + s * torch.randn(other.shape, generator=g)).clamp(-1, 1)))
             for s in (0.2, 0.4, 0.8)]
    blurred = [fid(a, extract(net, blur(other, s))) for s in (0.5, 1.0, 2.0)]
    assert same < 0.5 * noisy[0] and same < 0.5 * blurred[0], (same, noisy, blurred)
    assert noisy == sorted(noisy) and blurred == sorted(blurred), (noisy, blurred)
    assert noisy[-1] > 5 * same and blurred[-1] > 5 * same


def test_kid_is_unbiased_on_one_distribution_and_positive_for_another(digits, net, halves):
    a, b = halves
    mean, std = kid(a, b)
    assert std > 0 and abs(mean) < 2 * std, (mean, std)
    noisy = extract(net, (digits[0][N:2 * N] + 0.4 * torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))).clamp(-1, 1))
    far, far_std = kid(a, noisy)
    assert far > 10 * std and far > 5 * far_std
    assert kid(a, b) == (mean, std)                        # subsets drawn from a fixed seed


def test_precision_drops_when_half_the_images_are_noise(digits, net, halves):
    a, b = halves
    other = digits[0][N:2 * N].clone()
    other[: N // 2] = torch.rand(N // 2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    p_same, r_same = precision_recall(a, b)
    p_half, r_half = precision_recall(a, extract(net, other))
    assert p_same > 0.8 and p_half < p_same - 0.3, (p_same, p_half)
    assert r_half > r_same - 0.15          # the real digits left still cover most of the real manifold


def test_recall_drops_when_classes_are_missing(digits, net, halves):
    # One missing digit class moves recall by only ~0.02 on these features (digits' classes overlap there),
    # within its sampling noise; three missing classes (30% of the data) move it clearly.
    x, y = digits
    a, b = halves
    rest, labels = x[N:], y[N:]
    fewer = rest[~torch.isin(labels, torch.tensor([0, 1, 2]))][:N]
    p_same, r_same = precision_recall(a, b)
    p_fewer, r_fewer = precision_recall(a, extract(net, fewer))
    assert r_fewer < r_same - 0.06, (r_same, r_fewer)
    assert p_fewer > p_same - 0.05                          # what is there is still real-looking


def test_precision_recall_by_hand():
    # Real points 0, 1, 2, 3 on a line, k=1: every radius is 1, the real manifold is [-1, 4].
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[3.5], [4.5], [10.0], [11.0]])     # fake radii (k=1): 1, 1, 1, 1
    p, r = precision_recall(real, fake, k=1)
    assert p == 0.25                                         # only 3.5 lies within reach of a real point
    assert r == 0.25                                         # only 3 lies within 1 of a fake point


def test_size_checks_warn_and_fail_clearly():
    g = torch.Generator().manual_seed(0)
    few = torch.randn(50, 64, generator=g, dtype=torch.float64)
    notes = check_sizes(few, few + 1)
    assert len(notes) == 1 and "fewer than the 65 needed" in notes[0]
    assert check_sizes(torch.randn(80, 8, generator=g), torch.randn(80, 8, generator=g)) == []
    with pytest.raises(NoisecraftError, match="too few"):
        compare(few[:3], few[:3])
    with pytest.raises(NoisecraftError, match="feature sizes differ"):
        compare(few, few[:, :10])
    r = compare(few, few + 0.5)
    assert set(r) >= {"fid", "kid", "kid_std", "precision", "recall", "warnings"} and math.isfinite(r["fid"])
