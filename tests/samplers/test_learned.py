"""The learned sampler: coefficients fitted to a model's ODE, stored with its grid, checked on use."""
import pytest
import torch

from noisecraft import NoiseSchedule, NoisecraftError, sample
from noisecraft.eval.analytic import AnalyticEpsModel, GaussianMixture
from noisecraft.samplers import make_timesteps, plan
from noisecraft.samplers.common import make_denoiser, sigma_grid, ve_denoiser
from noisecraft.samplers.learned import fit_coefficients
from noisecraft.samplers.tuning import endpoint_error, read_coefficients, read_grids, save_grid, tune_learned

SCHEDULE = NoiseSchedule.linear()
MIXTURE = GaussianMixture.image_like(shape=(1, 4, 4), k=4)


def trajectory(model, sampler, grid, x_T):
    """The VE states a sampler visits after each step (the last one its output)."""
    sigmas = sigma_grid(SCHEDULE, grid).tolist()
    states = []
    sample(model, x_T.shape, schedule=SCHEDULE, sampler=sampler, spacing=grid, x_T=x_T, clip_denoised=False,
           callback=lambda i, x, x0: states.append(x.double() * (1 + sigmas[i + 1] ** 2) ** 0.5))
    return sigmas, states


def with_coefficients(model, steps, coefficients, grid):
    model.grids = {"learned": {str(steps): grid.tolist()}}
    model.coefficients = {"learned": {str(steps): [c.tolist() for c in coefficients]}}
    return model


@pytest.mark.parametrize("teacher", ["ddim", "dpmpp_2m", "unipc"])
def test_fit_recovers_a_linear_solver_exactly(teacher):
    """DDIM, DPM-Solver++(2M) and UniPC are linear solvers of this family, so fitting to their own trajectory
    gives back coefficients that reproduce them."""
    model = AnalyticEpsModel(MIXTURE, SCHEDULE)
    grid = make_timesteps("trailing", 6, SCHEDULE)
    x_T = torch.randn(64, *MIXTURE.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas, states = trajectory(model, teacher, grid, x_T)
    D = ve_denoiser(make_denoiser(model, SCHEDULE, "epsilon", {}, False), SCHEDULE)
    coefficients = fit_coefficients(D, x_T * (1 + sigmas[0] ** 2) ** 0.5, sigmas, grid.tolist(), states, ridge=0.0)
    with_coefficients(model, 6, coefficients, grid)
    x_new = torch.randn(8, *MIXTURE.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = sample(model, x_new.shape, schedule=SCHEDULE, sampler="learned", steps=6, x_T=x_new, clip_denoised=False)
    theirs = sample(model, x_new.shape, schedule=SCHEDULE, sampler=teacher, spacing=grid, x_T=x_new, clip_denoised=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_tuned_learned_solver_beats_unipc_at_five_steps_on_held_out_noise():
    model = AnalyticEpsModel(MIXTURE, SCHEDULE)
    grid, coefficients, info = tune_learned(model, MIXTURE.shape, 5, schedule=SCHEDULE, n=64, reference_steps=200,
                                            max_evals=60, clip_denoised=False)
    assert info["error"] < info["start_error"] and len(grid) == 5 and grid[0] == 999
    with_coefficients(model, 5, coefficients, grid)
    x_T = torch.randn(256, *MIXTURE.shape, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    common = dict(schedule=SCHEDULE, x_T=x_T, clip_denoised=False)
    exact = sample(model, x_T.shape, sampler="dpmpp_3m", steps=300, spacing="logsnr", **common)
    learned = endpoint_error(sample(model, x_T.shape, sampler="learned", steps=5, **common), exact)
    unipc = min(endpoint_error(sample(model, x_T.shape, sampler="unipc", steps=5, spacing=s, **common), exact)
                for s in ("trailing", "logsnr", "karras"))
    assert learned < unipc / 2, (learned, unipc)


def test_coefficients_round_trip_through_grids_json(tmp_path):
    grid = torch.tensor([999.0, 400.0, 20.0])
    coefficients = [torch.tensor([0.1, 0.9]), torch.tensor([0.0, 0.2, 0.8]), torch.tensor([0.0, 0.0, 0.1, 0.9])]
    save_grid(tmp_path, "learned", 3, grid, {"note": "test"}, coefficients)
    save_grid(tmp_path, "unipc", 3, grid, {})
    assert read_grids(tmp_path)["learned"]["3"] == grid.tolist() and "unipc" in read_grids(tmp_path)
    assert read_coefficients(tmp_path) == {"learned": {"3": [c.tolist() for c in coefficients]}}


def test_learned_needs_its_own_fitted_coefficients():
    model = AnalyticEpsModel(MIXTURE, SCHEDULE)
    with pytest.raises(NoisecraftError, match="noisecraft tune --model MODEL --sampler learned --steps 5"):
        plan(model, SCHEDULE, "learned", 5)
    grid = torch.tensor([999.0, 300.0])
    with_coefficients(model, 2, [torch.tensor([0.2, 0.8]), torch.tensor([0.0, 0.5, 0.5])], grid)
    assert plan(model, SCHEDULE, "learned", 2).grid.tolist() == grid.tolist()
    with pytest.raises(NoisecraftError, match="own grid"):
        plan(model, SCHEDULE, "learned", 2, spacing="trailing")
    with pytest.raises(NoisecraftError, match="own grid"):
        plan(model, SCHEDULE, "learned", 2, spacing=[999, 10])
    model.coefficients["learned"]["2"] = [[0.2, 0.8], [0.5, 0.5]]              # one number short
    with pytest.raises(NoisecraftError, match="2 lists of 2, 3"):
        plan(model, SCHEDULE, "learned", 2)
