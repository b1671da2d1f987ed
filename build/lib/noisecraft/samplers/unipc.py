"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and a free corrector (UniC) for the
data-prediction ODE.

In the VE view (x = x_0 + sigma eps), lambda = -log(sigma), h = lambda_next - lambda, one step is
    x_next = e^{-h} x - (e^{-h} - 1) m_0 - B(h) sum_k rho_k D_k,
with m_0 the current x_0 estimate and D_k = (m_k - m_0) / r_k the scaled differences to earlier
estimates at relative positions r_k = (lambda_k - lambda) / h (their Alg. 2 and eq. 8, data prediction).
The weights rho solve R rho = b with R_ij = r_j^(i-1) and b_i = i! h phi_{i+1}(h) / B(h); B(h) = h
("bh1") or e^h - 1 ("bh2"). After the model is called at x_next, the corrector redoes the same step
with that new estimate included (one more order, no extra model call). The final step, to sigma = 0,
returns the last x_0 estimate, and the order drops to 1 there (diffusers' lower_order_final).
"""
from __future__ import annotations

import math

import numpy as np

from noisecraft.samplers.common import sampler_info, sigma_grid, ve_denoiser


def _weights(h: float, order: int, variant: str) -> tuple[float, float, np.ndarray]:
    """(h phi_1 = e^{-h} - 1, B(h), b) for data prediction, where the step variable is -h."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1                       # phi_2 h, then the recursion phi_{k+1} = (phi_k - 1/k!) / h
    B = hh if variant == "bh1" else math.expm1(hh)
    b, factorial = [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / B)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, B, np.array(b)


def _differences(ms: list, lams: list, h: float, order: int) -> tuple[list[float], list]:
    """r_k and D_k against the k-th previous estimate, k = 1 .. order - 1 (ms[-1] is m_0)."""
    rks = [(lams[-1 - k] - lams[-1]) / h for k in range(1, order)]
    return rks, [(ms[-1 - k] - ms[-1]) / r for k, r in zip(range(1, order), rks)]


def _step(x, ms: list, lams: list, lam_next: float, order: int, variant: str, m_next=None):
    """The predictor from (x, lams[-1]) to lam_next; with m_next, the corrector of the same step."""
    h = lam_next - lams[-1]
    rks, D = _differences(ms, lams, h, order)
    h_phi_1, B, b = _weights(h, order, variant)
    x_next = math.exp(-h) * x - h_phi_1 * ms[-1]
    R = np.vander(np.array(rks + [1.0]), order, increasing=True).T     # R[i, j] = r_j^i
    if m_next is None:
        if not D:
            return x_next
        rho = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        return x_next - B * sum(r * d for r, d in zip(rho, D))
    rho = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
    return x_next - B * (sum(r * d for r, d in zip(rho[:-1], D)) + rho[-1] * (m_next - ms[-1]))


def _unipc(denoise, x, timesteps, schedule, callback, variant: str, max_order: int = 2):
    sigmas, ts, D = sigma_grid(schedule, timesteps).tolist(), timesteps.tolist(), ve_denoiser(denoise, schedule)
    lam = [-math.log(s) if s > 0 else math.inf for s in sigmas]
    n = len(ts)
    x = x * (1 + sigmas[0] ** 2) ** 0.5
    ms, lams, x_prev, order = [], [], None, 0
    for i, t in enumerate(ts):
        m = D(x, sigmas[i], t)
        if i > 0:                                   # UniC: correct x with the estimate just made there
            x = _step(x_prev, ms, lams, lam[i], order, variant, m_next=m)
        ms, lams = (ms + [m])[-max_order:], (lams + [lam[i]])[-max_order:]
        order = min(max_order, n - i, i + 1)        # warm-up at the start, first order at the end
        x_prev = x
        x = ms[-1] if sigmas[i + 1] == 0 else _step(x, ms, lams, lam[i + 1], order, variant)
        if callback is not None:
            callback(i, x / (1 + sigmas[i + 1] ** 2) ** 0.5, m)
    return x


@sampler_info(nfe=lambda steps: steps, default_steps=10, default_spacing="trailing", default_eta=0.0)
def unipc(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None):
    """UniPC-2 with B(h) = e^h - 1 ("bh2", diffusers' default). One model call per step; eta unused."""
    return _unipc(denoise, x, timesteps, schedule, callback, "bh2")


@sampler_info(nfe=lambda steps: steps, default_steps=10, default_spacing="trailing", default_eta=0.0)
def unipc_bh1(denoise, x, timesteps, schedule, *, noise, eta=0.0, callback=None):
    """UniPC-2 with B(h) = h ("bh1", suggested by the paper for unconditional sampling at few steps).
    One model call per step; eta unused."""
    return _unipc(denoise, x, timesteps, schedule, callback, "bh1")
