"""RePaint: known pixels are kept exactly, its path is the paper's, and with the exact denoiser for
Gaussian data the filled pixels follow the true conditional distribution given the known ones."""
import pytest
import torch

from noisecraft import NoiseSchedule, NoisecraftError, inpaint
from noisecraft.tasks.inpaint import jump_path, model_calls
from tests.analytic import GaussianData, GaussianEpsModel


@pytest.fixture(scope="module")
def setup():
    schedule = NoiseSchedule.linear()
    data = GaussianData(seed=2)
    return schedule, data, GaussianEpsModel(data, schedule)


def test_jump_path_repeats_each_block_and_ends_clean():
    assert jump_path(5, 2, 1) == [0, 1, 2, 3, 4, 5]
    assert jump_path(5, 2, 3) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 5]
    path = jump_path(250, 10, 10)
    assert all(b == a + 1 or b == a - 10 for a, b in zip(path, path[1:])) and path[-1] == 250
    assert model_calls(250, 10, 10) == 24 * 10 * 10 + 10


@pytest.mark.parametrize("bad", [dict(steps=0), dict(jump=0), dict(resample=0), dict(steps=2.5)])
def test_bad_path_options_are_clear_errors(bad):
    with pytest.raises(NoisecraftError, match="must be a whole number >= 1"):
        jump_path(**{"steps": 10, "jump": 2, "resample": 2, **bad})


def test_known_pixels_are_kept_exactly(setup):
    schedule, data, model = setup
    x = torch.rand(4, *data.shape) * 2 - 1
    mask = torch.zeros(4, 1, *data.shape[1:])
    mask[0, ..., 0, 0] = mask[1, ..., 1, :] = mask[2, ..., :, 1] = mask[3] = 1          # per-image masks
    out = inpaint(model, x, mask, schedule=schedule, steps=20, jump=5, resample=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[mask.expand_as(x) == 0], x[mask.expand_as(x) == 0])
    assert not torch.allclose(out[mask.expand_as(x) == 1], x[mask.expand_as(x) == 1])


def test_resampling_pulls_the_fill_towards_the_true_conditional(setup):
    """Replacement alone barely passes the known pixels' information on (it only reaches the model once the
    signal outweighs the noise); RePaint's resampling is what harmonizes, here to within 0.1 of the exact
    conditional mean where plain replacement stays near the marginal one."""
    schedule, data, model = setup
    mean, cov = data.moments()
    x_known, _ = data.sample(1, torch.Generator().manual_seed(7))
    k, u = torch.tensor([0, 2]), torch.tensor([1, 3])                         # left column known, right column filled
    kk, uk = cov[k][:, k], cov[u][:, k]
    cond_mean = mean[u] + uk @ torch.linalg.solve(kk, x_known.flatten()[k].double() - mean[k])   # Gaussian conditioning
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 1] = 1
    n = 3000
    errors = []
    for jump, resample in ((10, 1), (1, 20)):
        out = inpaint(model, x_known.float().expand(n, -1, -1, -1), mask, schedule=schedule, steps=100, jump=jump,
                      resample=resample, reconstruction=0, clip_denoised=False, generator=torch.Generator().manual_seed(8))
        errors.append(float((out.reshape(n, -1)[:, u].double().mean(0) - cond_mean).norm()))
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3
    # Reconstruction guidance harmonizes without resampling, at 100 steps instead of 2,000 (measured 0.10 against
    # replacement's 0.45). Its weight depends on the data: at w_r = 50, right for 16x16 digits, these strongly
    # correlated pixels overshoot.
    out = inpaint(model, x_known.float().expand(n, -1, -1, -1), mask, schedule=schedule, steps=100, resample=1,
                  reconstruction=5, clip_denoised=False, generator=torch.Generator().manual_seed(8))
    assert float((out.reshape(n, -1)[:, u].double().mean(0) - cond_mean).norm()) < errors[0] / 3


def test_mask_without_pixels_or_of_another_size_is_a_clear_error(setup):
    schedule, data, model = setup
    x = torch.zeros(2, *data.shape)
    with pytest.raises(NoisecraftError, match="reconstruction guidance weight must be a number >= 0"):
        inpaint(model, x, torch.ones(1, 1, 2, 2), schedule=schedule, steps=2, reconstruction=-1)
    with pytest.raises(NoisecraftError, match="selects no pixels"):
        inpaint(model, x, torch.zeros(1, 1, 2, 2), schedule=schedule, steps=2)
    with pytest.raises(NoisecraftError, match="the size of the images"):
        inpaint(model, x, torch.ones(1, 1, 3, 3), schedule=schedule, steps=2)
