"""SDEdit against exact references: strength 0 is the identity, strength 1 is sample(), and with the
exact denoiser for Gaussian data an edit of data samples is again distributed as the data."""
import pytest
import torch

from noisecraft import NoiseSchedule, NoisecraftError, edit, sample
from noisecraft.tasks.edit import edit_plan
from tests.analytic import GaussianData, GaussianEpsModel, frechet_to_truth


@pytest.fixture(scope="module")
def setup():
    schedule = NoiseSchedule.linear()
    data = GaussianData()
    return schedule, data, GaussianEpsModel(data, schedule)


def test_strength_zero_returns_the_input(setup):
    schedule, data, model = setup
    x = torch.rand(5, *data.shape) * 2 - 1
    assert torch.equal(edit(model, x, 0.0, schedule=schedule, steps=10), x)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m_sde", "unipc"])
def test_strength_one_is_a_sample_from_the_same_noise(setup, sampler):
    schedule, data, model = setup
    x = torch.rand(6, *data.shape) * 2 - 1
    out = edit(model, x, 1.0, schedule=schedule, sampler=sampler, steps=12, generator=torch.Generator().manual_seed(3))
    ref = sample(model, x.shape, schedule, sampler=sampler, steps=12, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, ref)


def test_edit_runs_the_tail_of_the_grid_from_the_noised_input():
    schedule = NoiseSchedule.linear()
    p, grid = edit_plan(None, schedule, 0.5, "ddim", 10, "trailing")
    assert grid.tolist() == [499, 399, 299, 199, 99] and len(p.grid) == 10
    _, grid = edit_plan(None, schedule, 0.05, "ddim", 10, "trailing")      # below the grid's last step: one step
    assert grid.tolist() == pytest.approx([0.05 * 999])


def test_edit_of_data_samples_is_distributed_as_the_data(setup):
    schedule, data, model = setup
    x0, _ = data.sample(8000, torch.Generator().manual_seed(1))
    out = edit(model, x0.float(), 0.5, schedule=schedule, sampler="ddpm", steps=1000, clip_denoised=False,
               generator=torch.Generator().manual_seed(2))
    mean_err, cov_err = frechet_to_truth(out, data)
    assert mean_err < 0.02 and cov_err < 0.04                  # the data sample itself: 0.021
    assert (out - x0).pow(2).mean() > 0.01                                # it did change the images


def test_distance_to_the_input_grows_with_strength(setup):
    schedule, data, model = setup
    x0, _ = data.sample(2000, torch.Generator().manual_seed(4))
    dist = [float((edit(model, x0.float(), s, schedule=schedule, sampler="ddpm", steps=50,
                        generator=torch.Generator().manual_seed(5)) - x0).pow(2).mean()) for s in (0.1, 0.4, 0.8)]
    assert dist[0] < dist[1] < dist[2]


@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan"), "0.5", True])
def test_strength_outside_0_1_is_a_clear_error(setup, strength):
    schedule, data, model = setup
    with pytest.raises(NoisecraftError, match="strength must be a number in"):
        edit(model, torch.zeros(1, *data.shape), strength, schedule=schedule)
