"""A small CNN classifier trained on real images, used to judge generated ones
(the "domain metric" for labelled sets such as digits and Fashion-MNIST)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                                  # (B, classes) logits


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels (padding with the background, -1)."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 30,
                     batch_size: int = 128, seed: int = 0, max_shift: int = 1) -> SmallCNN:
    """Cross-entropy with Adam and small random shifts; deterministic for a seed on CPU."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = SmallCNN(images.shape[1], num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(images) // batch_size))
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            loss = F.cross_entropy(net(random_shift(images[idx], max_shift, gen)), labels[idx], label_smoothing=0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def predict_proba(net: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([net(images[i:i + batch_size]).softmax(1) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def penultimate(net: SmallCNN, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The pooled features before the classifier's last layer (N, 4 * width), float64."""
    return torch.cat([net.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).double()
