"""DPM-Solver++ (Lu et al. 2022b): exponential integrators for the data-prediction ODE and SDE.

In the VE view (x = x_0 + sigma eps) with lambda = -log(sigma) and h = lambda_next - lambda, the
linear part is solved exactly: x_next = (sigma_next / sigma) x - expm1(-h) D, where D approximates
x_0 over the step (their eq. 9 with alpha = 1). Multistep variants build D from the x_0 estimates of
previous steps. As in the paper (§5) the last step, to sigma = 0, is first order, and with fewer than
15 steps the order also drops on the step before it, which keeps few-step sampling stable."""
from __future__ import annotations

import math

from noisecraft.samplers.common import sampler_info, sigma_grid, ve_denoiser


def _order(i: int, steps: int, max_order: int) -> int:
    if i == steps - 1:
        return 1
    if i == steps - 2 and steps < 15:
        return min(max_order, 2, i + 1)
    return min(max_order, i + 1)


def _multistep_x0(x0s: list, hs: list, order: int):
    """(D, D1, D2): the x_0 estimate and its first and second divided differences in lambda,
    scaled by h, from the last `order` estimates (x0s[-1] is the current one; hs[-1] the current h)."""
    if order == 1:
        return x0s[-1], 0, 0
    h = hs[-1]
    r0 = hs[-2] / h
    d1_0 = (x0s[-1] - x0s[-2]) / r0
    if order == 2:
        return x0s[-1], d1_0, 0
    r1 = hs[-3] / h
    d1_1 = (x0s[-2] - x0s[-3]) / r1
    return x0s[-1], d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)


def _multistep(denoise, x, timesteps, schedule, noise, callback, max_order: int, sde: bool):
    sigmas, ts, D = sigma_grid(schedule, timesteps).tolist(), timesteps.tolist(), ve_denoiser(denoise, schedule)
    x = x * (1 + sigmas[0] ** 2) ** 0.5
    x0s, hs = [], []
    for i, t in enumerate(ts):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0s.append(D(x, s, t))
        hs.append(math.log(s / s_next) if s_next > 0 else math.inf)
        order = _order(i, len(ts), max_order)
        d0, d1, d2 = _multistep_x0(x0s, hs, order)
        if s_next == 0:
            x = d0
        elif sde:
            # SDE-DPM-Solver++ (Lu et al. 2022b, App. B; Gonzalez et al. 2023): the noise-free part decays
            # as e^{-2h} instead of e^{-h}, fresh noise refills the variance sigma_next^2 (1 - e^{-2h}).
            h = hs[-1]
            decay = -math.expm1(-2 * h)
            x = (s_next / s) * math.exp(-h) * x + decay * (d0 + 0.5 * d1) + s_next * decay ** 0.5 * noise()
        elif order < 3:
            # first order, or the second-order midpoint form of DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2)
            x = (s_next / s) * x - math.expm1(-hs[-1]) * (d0 + 0.5 * d1)
        else:
            # third order (Lu et al. 2022b, App. A): phi_1 = e^{-h} - 1 and its divided differences
            h = hs[-1]
            phi1 = math.expm1(-h)
            x = (s_next / s) * x - phi1 * d0 + (phi1 / h + 1) * d1 - ((phi1 + h) / h ** 2 - 0.5) * d2
        del x0s[:-3], hs[:-3]
        if callback is not None:
            callback(i, x / (1 + s_next ** 2) ** 0.5, x0s[-1])
    return x


@sampler_info(nfe=lambda steps: steps, default_steps=20, default_spacing="trailing", default_eta=0.0)
def dpmpp_2m(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None):
    """DPM-Solver++(2M), Lu et al. (2022b) Alg. 2. One model call per step; eta is unused."""
    return _multistep(denoise, x, timesteps, schedule, noise, callback, max_order=2, sde=False)


@sampler_info(nfe=lambda steps: steps, default_steps=20, default_spacing="trailing", default_eta=0.0)
def dpmpp_3m(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None):
    """DPM-Solver++(3M): third-order multistep (Lu et al. 2022b, App. A). One model call per step."""
    return _multistep(denoise, x, timesteps, schedule, noise, callback, max_order=3, sde=False)


@sampler_info(nfe=lambda steps: steps, default_steps=25, default_spacing="trailing", default_eta=1.0)
def dpmpp_2m_sde(denoise, x, timesteps, schedule, *, noise, eta=1.0, callback=None):
    """SDE-DPM-Solver++(2M), midpoint form (diffusers' "sde-dpmsolver++"). One model call per step;
    draws fresh noise every step. eta is unused (the SDE fixes the amount of noise)."""
    return _multistep(denoise, x, timesteps, schedule, noise, callback, max_order=2, sde=True)
