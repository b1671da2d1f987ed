"""Training losses (DDPM eq. 14, 'L_simple', and its x_0 / v counterparts)."""
from __future__ import annotations

import torch

from noisecraft.diffusion.forward import expand
from noisecraft.diffusion.param import target


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023, eq. 6): weight the x_0 loss by min(SNR, gamma). The same
    weight expressed for an eps loss is min(SNR, gamma)/SNR and for a v loss min(SNR, gamma)/(SNR + 1),
    since ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2."""
    clipped = snr.clamp(max=gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def diffusion_loss(
    output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    prediction: str = "epsilon",
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error between the network output and its target, averaged over pixels,
    optionally min-SNR weighted per sample, then averaged over the batch. alpha_bar: (B,)."""
    a = expand(alpha_bar, x0)
    per_sample = (output.float() - target(prediction, x0, noise, a).float()).pow(2).flatten(1).mean(1)
    if min_snr_gamma is not None:
        snr = alpha_bar / (1 - alpha_bar)
        per_sample = per_sample * min_snr_weight(snr, min_snr_gamma, prediction).to(per_sample)
    return per_sample.mean()
