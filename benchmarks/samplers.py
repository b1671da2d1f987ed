"""Sampler accuracy at a small budget of model calls, noisecraft against diffusers, same run.

Data with an exact optimal denoiser (noisecraft.eval.analytic): an image-like 8-component Gaussian
mixture in 1x8x8 and a Gaussian in 1x8x8, on the DDPM linear schedule. Every configuration starts from
the same N noise images; each is scored by
  - excess FD: Frechet distance of its samples to the true distribution minus that of the exact ODE
    solution from the same noise (a converged 3rd-order solve), i.e. minus the finite-sample floor;
  - excess mode error (mixture): total variation between the samples' component shares and the true
    weights, minus the same for the exact solution.
A budget of B model calls runs each sampler with the most steps whose NFE fits in B (Heun: (B+1)//2).
Tuned grids and the learned sampler's coefficients are fitted on separate calibration noise (seed 0)
and scored on the evaluation noise.

    python benchmarks/samplers.py [--n 4000] [--budgets 5,8,10,20]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                       UniPCMultistepScheduler)

from noisecraft import SAMPLERS, NoiseSchedule, sample
from noisecraft.eval.analytic import AnalyticEpsModel, GaussianMixture, frechet_distance
from noisecraft.samplers.tuning import STOCHASTIC, tune_grid, tune_learned

ROOT = Path(__file__).resolve().parent
SPACINGS = ("trailing", "karras", "logsnr")
TUNED = ("unipc",)
BETAS = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def diffusers_configs():
    """name -> (scheduler factory, model calls per step count)."""
    one = lambda s: s
    dpm = lambda order, **kw: (lambda: DPMSolverMultistepScheduler(**BETAS, solver_order=order, final_sigmas_type="zero",
                                                                   algorithm_type="dpmsolver++", **kw), one)
    uni = lambda bh, **kw: (lambda: UniPCMultistepScheduler(**BETAS, solver_type=bh, **kw), one)
    return {
        "DDIM trailing": (lambda: DDIMScheduler(**BETAS, timestep_spacing="trailing", clip_sample=False), one),
        "Euler trailing": (lambda: EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing"), one),
        "Euler karras": (lambda: EulerDiscreteScheduler(**BETAS, use_karras_sigmas=True), one),
        "Heun trailing": (lambda: HeunDiscreteScheduler(**BETAS, timestep_spacing="trailing"), lambda s: 2 * s - 1),
        "Heun karras": (lambda: HeunDiscreteScheduler(**BETAS, use_karras_sigmas=True), lambda s: 2 * s - 1),
        "DPM++ 2M trailing": dpm(2, timestep_spacing="trailing"),
        "DPM++ 2M karras": dpm(2, use_karras_sigmas=True),
        "DPM++ 2M logsnr": dpm(2, use_lu_lambdas=True),
        "DPM++ 3M trailing": dpm(3, timestep_spacing="trailing"),
        "DPM++ 3M karras": dpm(3, use_karras_sigmas=True),
        "DPM++ 3M logsnr": dpm(3, use_lu_lambdas=True),
        "UniPC bh2 trailing": uni("bh2", timestep_spacing="trailing", final_sigmas_type="zero"),
        "UniPC bh2 karras": uni("bh2", use_karras_sigmas=True, final_sigmas_type="zero"),
        "UniPC bh2 exponential": uni("bh2", use_exponential_sigmas=True, final_sigmas_type="zero"),
        "DPM++ 2M exponential": dpm(2, use_exponential_sigmas=True),
        # bh1 with a zero final sigma returns NaN in diffusers (B(h) = -inf times 0), so it ends at sigma_min.
        "UniPC bh1 trailing": uni("bh1", timestep_spacing="trailing", final_sigmas_type="sigma_min"),
        "UniPC bh1 karras": uni("bh1", use_karras_sigmas=True, final_sigmas_type="sigma_min"),
    }


def run_diffusers(make, model, x_T, steps):
    scheduler = make()
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t.double().expand(len(x)))
        x = scheduler.step(eps, t, x).prev_sample             # all deterministic: no generator needed
    return x


def steps_for(nfe, budget: int) -> int:
    return max(s for s in range(1, budget + 1) if nfe(s) <= budget)


def score(x, data, mean, cov, floor) -> dict:
    fd = frechet_distance(x, mean, cov)
    out = {"fd": fd, "excess_fd": fd - floor["fd"]}
    if len(data.pi) > 1:
        tv = float(0.5 * (data.mode_weights(x) - data.pi).abs().sum())
        out |= {"mode_tv": tv, "excess_mode_tv": tv - floor["mode_tv"]}
    return out


def bench(name: str, data: GaussianMixture, schedule, n: int, budgets, tune: bool, log) -> dict:
    model = AnalyticEpsModel(data, schedule)
    mean, cov = data.moments()
    x_T = torch.randn(n, *data.shape, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    common = dict(schedule=schedule, x_T=x_T, clip_denoised=False, generator=torch.Generator().manual_seed(1))
    exact = sample(model, x_T.shape, sampler="dpmpp_3m", steps=500, spacing="logsnr", **common).double()
    check = sample(model, x_T.shape, sampler="unipc", steps=1000, spacing="logsnr", **common).double()
    floor = {"fd": frechet_distance(exact, mean, cov),
             "mode_tv": float(0.5 * (data.mode_weights(exact) - data.pi).abs().sum()),
             "exact_solution_rms_disagreement": float((exact - check).pow(2).mean().sqrt())}
    x_data, _ = data.sample(n, torch.Generator().manual_seed(99))
    floor["true_samples_fd"] = frechet_distance(x_data, mean, cov)
    log(f"[{name}] floor {floor}")
    rows = []
    for budget in budgets:
        for sampler, fn in SAMPLERS.items():
            if sampler == "learned":
                continue                                    # fitted per budget below
            steps = steps_for(fn.nfe, budget)
            for spacing in (("trailing",) if sampler in STOCHASTIC else SPACINGS):
                x = sample(model, x_T.shape, sampler=sampler, steps=steps, spacing=spacing, **common)
                rows.append({"impl": "noisecraft", "config": f"{sampler} {spacing}", "nfe": fn.nfe(steps),
                             "budget": budget, **score(x, data, mean, cov, floor)})
        if tune:
            for sampler in TUNED:
                t0 = time.time()
                grid, info = tune_grid(model, data.shape, sampler, budget, schedule=schedule, n=256, seed=0,
                                       reference_steps=300, max_evals=300, clip_denoised=False)
                x = sample(model, x_T.shape, sampler=sampler, spacing=grid, **common)
                rows.append({"impl": "noisecraft", "config": f"{sampler} tuned", "nfe": budget, "budget": budget,
                             "grid": grid.tolist(), "tuning": info | {"seconds": round(time.time() - t0, 1)},
                             **score(x, data, mean, cov, floor)})
            t0 = time.time()
            grid, coefficients, info = tune_learned(model, data.shape, budget, schedule=schedule, n=256, seed=0,
                                                    reference_steps=300, max_evals=100, clip_denoised=False)
            model.grids = {"learned": {str(budget): grid.tolist()}}
            model.coefficients = {"learned": {str(budget): [c.tolist() for c in coefficients]}}
            x = sample(model, x_T.shape, sampler="learned", steps=budget, **common)
            rows.append({"impl": "noisecraft", "config": "learned tuned", "nfe": budget, "budget": budget,
                         "grid": grid.tolist(), "coefficients": model.coefficients["learned"][str(budget)],
                         "tuning": info | {"seconds": round(time.time() - t0, 1)}, **score(x, data, mean, cov, floor)})
        for config, (make, nfe) in diffusers_configs().items():
            steps = steps_for(nfe, budget)
            x = run_diffusers(make, model, x_T, steps)
            rows.append({"impl": "diffusers", "config": config, "nfe": nfe(steps), "budget": budget,
                         **score(x, data, mean, cov, floor)})
        best = {impl: min((r for r in rows if r["budget"] == budget and r["impl"] == impl), key=lambda r: r["excess_fd"])
                for impl in ("noisecraft", "diffusers")}
        log(f"[{name}] budget {budget}: " + "; ".join(f"{k} best {v['config']} excess FD {v['excess_fd']:.4g}"
                                                      for k, v in best.items()))
    return {"floor": floor, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="evaluation samples per configuration")
    ap.add_argument("--budgets", default="5,8,10,20")
    ap.add_argument("--no-tune", action="store_true", help="skip the tuned grids")
    ap.add_argument("--out", default=str(ROOT / "results" / "samplers.json"))
    args = ap.parse_args()
    import diffusers
    budgets = [int(b) for b in args.budgets.split(",")]
    schedule = NoiseSchedule.linear()
    t0 = time.time()
    report = {"n": args.n, "budgets": budgets, "schedule": "linear DDPM, T=1000", "torch": torch.__version__,
              "diffusers": diffusers.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
              "datasets": {}}
    for name, data in (("mixture", GaussianMixture.image_like()), ("gaussian", GaussianMixture.gaussian((1, 8, 8)))):
        report["datasets"][name] = bench(name, data, schedule, args.n, budgets, not args.no_tune, print)
    report["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out} in {report['seconds']} s")


if __name__ == "__main__":
    main()
