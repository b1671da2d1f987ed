"""DDIM (Song, Meng & Ermon 2021)."""
from __future__ import annotations

from noisecraft.samplers.common import alpha_bar_grid, sampler_info


@sampler_info(nfe=lambda steps: steps, default_steps=50, default_spacing="trailing", default_eta=0.0)
def ddim(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None):
    """DDIM eq. 12: x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - a_s)/(1 - a_t)) sqrt(1 - a_t/a_s) (eq. 16). eta = 0 is deterministic,
    eta = 1 is DDPM's posterior. One model call per step."""
    ab = alpha_bar_grid(schedule, timesteps)
    for i, t in enumerate(timesteps.tolist()):
        x0, eps = denoise(x, t)
        a_t, a_s = float(ab[i]), float(ab[i + 1])
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5
        x = a_s ** 0.5 * x0 + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise()
        if callback is not None:
            callback(i, x, x0)
    return x
