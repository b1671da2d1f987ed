"""First- and second-order ODE/SDE solvers in the sigma (VE) view, as in Karras et al. (2022).

The probability-flow ODE there (eq. 4 with s(t) = 1, sigma(t) = t) is dx/dsigma = (x - D(x, sigma)) / sigma.
Samplers start from x_T ~ N(0, I) in the VP view and return x_0, like every other sampler."""
from __future__ import annotations

from noisecraft.samplers.common import sampler_info, sigma_grid, ve_denoiser


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """Split a step to sigma_next into a deterministic step down to sigma_down and fresh noise of
    size sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2 (the ancestral DDPM/DDIM step)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


@sampler_info(nfe=lambda steps: steps, default_steps=50, default_spacing="trailing", default_eta=0.0)
def euler(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None):
    """Euler's method on the ODE (Karras et al. 2022, Alg. 1 without the second-order correction).
    In this view it is exactly deterministic DDIM. One model call per step; eta is unused."""
    sigmas, ts, D = sigma_grid(schedule, timesteps).tolist(), timesteps.tolist(), ve_denoiser(denoise, schedule)
    x = x * (1 + sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(ts):
        x0 = D(x, sigmas[i], t)
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - x0) / sigmas[i]         # (x - x0)/sigma = dx/dsigma
        if callback is not None:
            callback(i, x / (1 + sigmas[i + 1] ** 2) ** 0.5, x0)
    return x


@sampler_info(nfe=lambda steps: steps, default_steps=50, default_spacing="trailing", default_eta=1.0)
def euler_a(denoise, x, timesteps, schedule, *, noise, eta=1.0, callback=None):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise sigma_up (eta = 1 is the
    ancestral DDPM amount; the usual default). One model call per step."""
    sigmas, ts, D = sigma_grid(schedule, timesteps).tolist(), timesteps.tolist(), ve_denoiser(denoise, schedule)
    x = x * (1 + sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(ts):
        x0 = D(x, sigmas[i], t)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + (down - sigmas[i]) * (x - x0) / sigmas[i]
        if up > 0:
            x = x + up * noise()
        if callback is not None:
            callback(i, x / (1 + sigmas[i + 1] ** 2) ** 0.5, x0)
    return x


@sampler_info(nfe=lambda steps: 2 * steps - 1, default_steps=25, default_spacing="trailing", default_eta=0.0)
def heun(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None):
    """Heun's second-order method (Karras et al. 2022, Alg. 1): an Euler step, then the average of
    the slopes at both ends; the last step, to sigma = 0, is plain Euler. 2 * steps - 1 model calls."""
    sigmas, ts, D = sigma_grid(schedule, timesteps).tolist(), timesteps.tolist(), ve_denoiser(denoise, schedule)
    x = x * (1 + sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(ts):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = D(x, s, t)
        d = (x - x0) / s
        x_euler = x + (s_next - s) * d
        if s_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - D(x_euler, s_next, ts[i + 1])) / s_next
            x = x + (s_next - s) * (d + d_next) / 2
        if callback is not None:
            callback(i, x / (1 + s_next ** 2) ** 0.5, x0)
    return x
