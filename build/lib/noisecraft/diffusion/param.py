"""The three things a network can predict and the maps between them.

With x_t = sqrt(a) x_0 + sqrt(1 - a) eps and a = alpha_bar_t (DDPM eq. 4):
  epsilon:       eps
  sample:        x_0
  v_prediction:  v = sqrt(a) eps - sqrt(1 - a) x_0   (Salimans & Ho 2022, §4)
"""
from __future__ import annotations

import torch

from noisecraft.errors import NoisecraftError

PREDICTIONS = ("epsilon", "sample", "v_prediction")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise NoisecraftError(f"unknown prediction {prediction!r}: use one of {', '.join(PREDICTIONS)}")
    return prediction


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()          # DDPM eq. 15 rearranged


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def v_target(x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def to_x0_eps(output: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Network output -> (x_0 estimate, eps estimate). `a` is alpha_bar_t broadcastable to x_t."""
    if prediction == "epsilon":
        return x0_from_eps(x_t, output, a), output
    if prediction == "sample":
        return output, eps_from_x0(x_t, output, a)
    if prediction == "v_prediction":
        # x_0 = sqrt(a) x_t - sqrt(1 - a) v,  eps = sqrt(1 - a) x_t + sqrt(a) v
        return a.sqrt() * x_t - (1 - a).sqrt() * output, (1 - a).sqrt() * x_t + a.sqrt() * output
    raise NoisecraftError(f"unknown prediction {prediction!r}: use one of {', '.join(PREDICTIONS)}")


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output."""
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    if prediction == "v_prediction":
        return v_target(x0, eps, a)
    raise NoisecraftError(f"unknown prediction {prediction!r}: use one of {', '.join(PREDICTIONS)}")
