import pytest
import torch

from noisecraft.eval.classifier import predict_proba, train_classifier
from noisecraft.eval.metrics import class_histogram, confident_fraction, nearest_distances, tv_to_uniform


def test_confidence_histogram_and_tv():
    probs = torch.tensor([[0.95, 0.05], [0.2, 0.8], [0.1, 0.9]])
    assert confident_fraction(probs) == pytest.approx(2 / 3)
    hist = class_histogram(probs)
    assert hist.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert tv_to_uniform(hist) == pytest.approx(1 / 6)
    assert tv_to_uniform(torch.tensor([0.25] * 4)) == 0


def test_nearest_distances_find_the_copy():
    ref = torch.randn(50, 1, 4, 4)
    samples = torch.stack([ref[7], ref[3] + 0.1])
    d, idx = nearest_distances(samples, ref)
    assert idx.tolist() == [7, 3] and d[0] == 0 and d[1] == pytest.approx(0.1, rel=1e-5)


def test_classifier_learns_separable_classes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 8, 8, generator=g) * 0.2
    y = torch.arange(200) % 2
    x[y == 1, :, :4] += 1.0                                     # class 1: bright top half
    net = train_classifier(x.clamp(-1, 1), y, 2, epochs=5, max_shift=0)
    assert (predict_proba(net, x).argmax(1) == y).float().mean() > 0.95
