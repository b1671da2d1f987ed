"""Domain metrics for labelled sources (digits, Fashion-MNIST): generated images judged by a small CNN trained
on the source's real train split at the images' size (eval/classifier.py), cached on disk once trained.

Reported: the judge's accuracy on the real test split (how far to trust it); the share of samples it labels
with confidence >= 0.9 and the total variation between its class histogram and uniform; and the Frechet
distance between its penultimate features of the samples and of the real test images (FID's formula in a
space trained on this domain, where e.g. a wrong stroke width counts more than for an ImageNet network).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from noisecraft.eval.analytic import frechet_distance
from noisecraft.eval.classifier import SmallCNN, penultimate, predict_proba, train_classifier
from noisecraft.eval.features import cache_dir
from noisecraft.eval.metrics import class_histogram, confident_fraction, tv_to_uniform

# Epochs over the whole train split: 30 on digits' 1,442 images gives ~99% test accuracy in seconds; 2 on
# Fashion-MNIST's 60,000 takes about two minutes on one core, once, and the judge is cached after that.
EPOCHS = {"digits": 30, "fashion-mnist": 2}


def has_domain_metrics(source: str) -> bool:
    return source in EPOCHS


def domain_judge(source: str, image_size: int, channels: int, epochs: int | None = None,
                 log: Callable[[str], None] = lambda _: None) -> tuple[SmallCNN, float]:
    """The classifier for `source` at image_size and `channels`, and its accuracy on the real test split;
    trained on the train split (seed 0) the first time, then read from the cache."""
    from noisecraft.data import load_dataset

    epochs = EPOCHS[source] if epochs is None else epochs
    key = json.dumps({"source": source, "size": image_size, "channels": channels, "epochs": epochs, "seed": 0})
    path = cache_dir().parent / "judges" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
    test = load_dataset(source, image_size=image_size, channels=channels, split="test")
    net = SmallCNN(channels, len(test.class_names))
    try:
        net.load_state_dict(load_file(path))
        net.eval()
    except Exception:  # not cached yet, or a truncated or foreign file: train (again)
        log(f"training the {source} judge at {image_size}x{image_size} ({epochs} epochs; cached afterwards)")
        train = load_dataset(source, image_size=image_size, channels=channels, split="train")
        net = train_classifier(train.images, train.labels, len(train.class_names), epochs=epochs, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    accuracy = float((predict_proba(net, test.images).argmax(1) == test.labels).double().mean())
    return net, accuracy


def domain_metrics(images: torch.Tensor, source: str, epochs: int | None = None,
                   log: Callable[[str], None] = lambda _: None) -> dict:
    """Judge generated images (N, C, H, W) in [-1, 1] of a labelled source (see has_domain_metrics)."""
    from noisecraft.data import load_dataset

    _, c, size, _ = images.shape
    net, accuracy = domain_judge(source, size, c, epochs, log)
    probs = predict_proba(net, images)
    real = penultimate(net, load_dataset(source, image_size=size, channels=c, split="test").images)
    return {"classifier_test_accuracy": accuracy, "confident_fraction": confident_fraction(probs),
            "class_tv_to_uniform": tv_to_uniform(class_histogram(probs)),
            "classifier_frechet": frechet_distance(penultimate(net, images), real.mean(0), torch.cov(real.T))}
