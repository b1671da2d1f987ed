"""Grids tuned for a model, saved with it, used through spacing="tuned" and sampler="auto"."""

import pytest
import torch

from noisecraft import NoiseSchedule, NoisecraftError, sample
from noisecraft.eval.analytic import AnalyticEpsModel, GaussianMixture
from noisecraft.samplers import plan
from noisecraft.samplers.auto import AUTO, choose
from noisecraft.samplers.common import dynamic_threshold_x0
from noisecraft.samplers.tuning import read_grids, save_grid, tune_grid

SCHEDULE = NoiseSchedule.linear()
DATA = GaussianMixture.image_like(shape=(1, 4, 4), k=4)


def model():
    return AnalyticEpsModel(DATA, SCHEDULE)


def test_tuned_grid_beats_its_start_and_is_a_valid_grid():
    grid, info = tune_grid(model(), DATA.shape, "unipc", 5, schedule=SCHEDULE, n=32, max_evals=80, clip_denoised=False)
    assert info["error"] <= info["start_error"] and info["evals"] > 5
    assert len(grid) == 5 and grid[0] == 999 and bool((grid.diff() < 0).all()) and grid.min() >= 0


def test_saved_grid_round_trips_and_samples_through_spacing_tuned(tmp_path):
    grid = torch.tensor([999.0, 700.5, 300.25, 50.0])
    save_grid(tmp_path, "unipc", 4, grid, {"note": "test"})
    save_grid(tmp_path, "dpmpp_2m", 4, grid, {})
    m = model()
    m.grids = read_grids(tmp_path)
    assert m.grids["unipc"]["4"] == grid.tolist() and set(m.grids) == {"unipc", "dpmpp_2m"}
    x_T = torch.randn(3, *DATA.shape, generator=torch.Generator().manual_seed(0))
    a = sample(m, x_T.shape, schedule=SCHEDULE, sampler="unipc", steps=4, spacing="tuned", x_T=x_T, clip_denoised=False)
    b = sample(m, x_T.shape, schedule=SCHEDULE, sampler="unipc", spacing=grid.tolist(), x_T=x_T, clip_denoised=False)
    assert torch.equal(a, b)
    # auto takes the tuned grid when the model has one for its sampler and budget
    auto_sampler = choose(4, None)[0]
    m.grids = {auto_sampler: {"4": grid.tolist()}}
    assert plan(m, SCHEDULE, "auto", 4).spacing == "tuned"


def test_missing_tuned_grid_says_how_to_make_one():
    with pytest.raises(NoisecraftError, match="noisecraft tune"):
        sample(model(), (1, *DATA.shape), schedule=SCHEDULE, sampler="unipc", steps=7, spacing="tuned")


def test_broken_grids_file_is_a_clear_error(tmp_path):
    (tmp_path / "grids.json").write_text('{"grids": [1, 2')
    with pytest.raises(NoisecraftError, match="not a valid grids file"):
        read_grids(tmp_path)
    with pytest.raises(NoisecraftError, match="not a valid grids file"):
        save_grid(tmp_path, "unipc", 3, torch.tensor([999.0, 500.0, 0.0]), {})
    assert (tmp_path / "grids.json").read_text() == '{"grids": [1, 2'            # left as it was


def test_stochastic_samplers_cannot_be_tuned():
    with pytest.raises(NoisecraftError, match="deterministic"):
        tune_grid(model(), DATA.shape, "euler_a", 5, schedule=SCHEDULE)


@pytest.mark.parametrize("grid, match", [([999, 999, 0], "strictly decreasing"), ([1200, 10], r"\[0, 999\]"),
                                         ([], "strictly decreasing"), (["a", "b"], "list of numbers")])
def test_custom_grid_is_checked(grid, match):
    with pytest.raises(NoisecraftError, match=match):
        sample(model(), (1, *DATA.shape), schedule=SCHEDULE, sampler="ddim", spacing=grid)


def test_custom_grid_and_steps_must_agree():
    with pytest.raises(NoisecraftError, match="has 3 timesteps"):
        sample(model(), (1, *DATA.shape), schedule=SCHEDULE, sampler="ddim", steps=4, spacing=[999, 500, 0])


@pytest.mark.parametrize("steps", [1, 5, 10, 20])
def test_auto_spends_exactly_the_budget(steps):
    m = model()
    sample(m, (2, *DATA.shape), schedule=SCHEDULE, sampler="auto", steps=steps)
    assert m.calls == steps


def test_auto_table_is_ordered_and_names_real_samplers():
    from noisecraft import SAMPLERS
    from noisecraft.samplers.spacing import SPACINGS
    assert [top for top, _ in AUTO] == sorted(top for top, _ in AUTO)
    for _, choices in AUTO:
        assert all(s in SAMPLERS and (sp in SPACINGS or sp == "tuned") and SAMPLERS[s].nfe(7) == 7 for s, sp in choices)
        assert choices[-1][1] != "tuned"                     # a choice that needs no fit is always left


def test_auto_takes_learned_coefficients_only_at_small_budgets():
    grids = {"learned": {"5": [999.0, 500.0, 200.0, 50.0, 5.0], "10": list(range(999, 0, -100))}}
    assert choose(5, grids) == ("learned", 5, "tuned")
    assert choose(5, {}) == ("unipc", 5, "trailing")
    assert choose(10, grids) == ("unipc", 10, "trailing")


def test_dynamic_thresholding_rescales_per_image():
    x0 = torch.stack([torch.linspace(-3, 3, 16).reshape(1, 4, 4), torch.linspace(-0.5, 0.5, 16).reshape(1, 4, 4)])
    out = dynamic_threshold_x0(x0, 1.0)
    torch.testing.assert_close(out[0], x0[0] / 3)          # s = max |x0| = 3: divided by it
    torch.testing.assert_close(out[1], x0[1])              # s < 1 is raised to 1: left alone
    assert dynamic_threshold_x0(x0, 0.5)[0].abs().max() == 1


def test_dynamic_threshold_must_be_a_quantile():
    with pytest.raises(NoisecraftError, match="quantile"):
        sample(model(), (1, *DATA.shape), schedule=SCHEDULE, dynamic_threshold=99.5)
