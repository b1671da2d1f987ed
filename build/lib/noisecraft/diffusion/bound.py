"""The variational bound of a discrete-time diffusion model, in bits per dimension (Ho et al. 2020, eq. 5):

    -log p(x_0) <= L_T + sum_{t=2}^{T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),   p = N(mu_theta(x_t, t), sigma_t^2 I)
    L_0     = -log p(x_0 | x_1),                                the discretized Gaussian of eq. 13

with mu_theta the posterior mean (eq. 7) at the network's x_0 estimate, clipped to [-1, 1], and sigma_t^2 the
posterior variance beta_tilde_t ("fixed small"); at t = 1, where beta_tilde is 0, the decoder takes
beta_tilde_2 as improved-diffusion does. Data are snapped to a `levels`-level grid first, so the bound is
on the probability of the quantized image, comparable with a VAE's bound or a PixelCNN's exact likelihood
at the same levels. Summing all T terms costs T network calls per image; `terms=K` estimates the middle sum
without bias from one random t in each of at most K strata of 2..T (L_T and L_0 are always exact). The strata
are geometric in t: the terms grow like 1/t towards the data, so equal strata would leave most of the
variance in the first one."""
from __future__ import annotations

import math

import torch

from noisecraft.diffusion.forward import expand, q_posterior, q_sample
from noisecraft.diffusion.param import to_x0_eps
from noisecraft.diffusion.schedule import NoiseSchedule
from noisecraft.errors import NoisecraftError


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        levels: int) -> torch.Tensor:
    """log P(x) for x on the grid -1 + 2k/(levels-1): N(mean, scale^2) integrated over x's bin of half-width
    1/(levels-1), the end bins extended to -inf and +inf (Ho et al. 2020 eq. 13). Where the bin's mass
    underflows, the density at the bin's centre times its width stands in (PixelCNN++'s fallback), so the
    gradient does not vanish for a badly placed mean."""
    half = 1.0 / (levels - 1)
    inv = torch.exp(-log_scale)
    upper, lower = (x - mean + half) * inv, (x - mean - half) * inv
    # Phi(upper) - Phi(lower), computed in whichever tail keeps its precision
    mass = torch.where(lower > 0, torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
                       torch.special.ndtr(upper) - torch.special.ndtr(lower))
    centre = (x - mean) * inv
    log_density = -0.5 * centre ** 2 - 0.5 * math.log(2 * math.pi) - log_scale + math.log(2 * half)
    inner = torch.where(mass > 1e-8, torch.log(mass.clamp(min=1e-8)), log_density)
    return torch.where(x < -1 + half, torch.special.log_ndtr(upper),
                       torch.where(x > 1 - half, torch.special.log_ndtr(-lower), inner))


def normal_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, for scalar Gaussians."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def snap(x: torch.Tensor, levels: int) -> torch.Tensor:
    """x in [-1, 1] moved to the nearest point of the grid -1 + 2k/(levels-1)."""
    return torch.round((x.clamp(-1, 1) + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1


def prior_term(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T per image (B,), in nats."""
    ab = expand(schedule.alphas_cumprod[-1:].expand(len(x0)), x0).double()
    x = x0.double()
    return normal_kl(ab.sqrt() * x, 1 - ab, torch.zeros_like(x), torch.ones_like(x)).flatten(1).sum(1)


def decoder_variance(schedule: NoiseSchedule) -> torch.Tensor:
    """sigma_t^2 of p(x_{t-1} | x_t) at each index (T,): beta_tilde, with index 0's zero replaced by index 1's."""
    var = schedule.posterior_variance.clone()
    var[0] = var[1]
    return var


@torch.no_grad()
def term(model, schedule: NoiseSchedule, x0: torch.Tensor, t: int, noise: torch.Tensor, prediction: str,
         levels: int) -> torch.Tensor:
    """The bound's term at index t (paper step t+1) per image (B,), in nats: at index 0 the decoder's L_0, above it
    L_t = KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1})) in the paper's numbering. x0 must lie on the grid."""
    B = len(x0)
    t_batch = torch.full((B,), float(t), device=x0.device)
    x_t = q_sample(schedule, x0, t_batch, noise)                                     # (B, C, H, W)
    a = expand(schedule.alphas_cumprod[t:t + 1].expand(B), x0)
    x0_hat, _ = to_x0_eps(model(x_t, t_batch).float(), x_t, a, prediction)
    x0_hat = x0_hat.clamp(-1, 1)
    var = float(decoder_variance(schedule)[t])
    if t == 0:
        log_scale = torch.full_like(x0, 0.5 * math.log(var))
        return -discretized_gaussian_log_likelihood(x0, x0_hat, log_scale, levels).flatten(1).sum(1).double()
    t_cpu = torch.full((B,), t)
    mean_q, var_q = q_posterior(schedule, x0.double(), x_t.double(), t_cpu)
    mean_p, _ = q_posterior(schedule, x0_hat.double(), x_t.double(), t_cpu)
    return normal_kl(mean_q, var_q, mean_p, torch.full_like(var_q, var)).flatten(1).sum(1)


def bits_per_dim(model, x: torch.Tensor, schedule: NoiseSchedule | None = None, prediction: str | None = None,
                 levels: int = 256, terms: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The bound -log2 p(x) / D per image (B,) for images x (B, C, H, W) in [-1, 1] at `levels` grey levels.
    schedule and prediction default to the model's. terms=None sums all T terms (T network calls per image);
    terms=K estimates the middle sum from at most K stratified timesteps (at most K + 1 calls), without bias."""
    if getattr(model, "vae", None) is not None:
        raise NoisecraftError("a latent diffusion model's bound would be on its VAE latents, not on the images' "
                              "pixels: use a pixel-space model")
    schedule = schedule or model.schedule
    prediction = prediction or model.prediction
    T = schedule.num_timesteps
    x0 = snap(x, levels)
    g = generator or torch.Generator().manual_seed(0)
    if terms is None or terms >= T - 1:
        chosen, weights = list(range(1, T)), [1.0] * (T - 1)
    else:
        edges = sorted(set(torch.logspace(0, math.log10(T), terms + 1).round().long().tolist()))   # strata of 1..T-1
        chosen = [int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in zip(edges[:-1], edges[1:])]
        weights = [float(hi - lo) for lo, hi in zip(edges[:-1], edges[1:])]
    total = prior_term(schedule, x0).cpu()
    for t, w in zip([0, *chosen], [1.0, *weights]):
        noise = torch.randn(x0.shape, generator=g).to(x0)
        total = total + w * term(model, schedule, x0, t, noise, prediction, levels).cpu()
    return (total / (x0[0].numel() * math.log(2))).float()
