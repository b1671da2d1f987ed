"""One common test class run over every sampler in the registry."""
import pytest
import torch

from noisecraft import NoiseSchedule, NoisecraftError, SAMPLERS, sample
from noisecraft.samplers import make_timesteps
from noisecraft.samplers.common import sigma_grid
from tests.analytic import GaussianData, GaussianEpsModel

SCHEDULE = NoiseSchedule.linear()
DATA = GaussianData()


def ddim_as_learned(model, steps):
    """Give the model coefficients for the learned sampler: those of DDIM on the trailing grid, which the
    learned family contains (x_{i+1} = r x_i + (1 - r) D_i with r = sigma_{i+1} / sigma_i)."""
    grid = make_timesteps("trailing", steps, SCHEDULE)
    sigmas, prev, coefficients = sigma_grid(SCHEDULE, grid).tolist(), [1.0], []
    for i in range(steps):
        r = sigmas[i + 1] / sigmas[i]
        prev = [r * c for c in prev] + [1 - r]
        coefficients.append(prev)
    model.grids, model.coefficients = {"learned": {str(steps): grid.tolist()}}, {"learned": {str(steps): coefficients}}


def run(name, generator, n=4, steps=10, prediction="epsilon", **kw):
    model = GaussianEpsModel(DATA, SCHEDULE, prediction)
    if name == "learned":
        ddim_as_learned(model, steps)
    x = sample(model, (n, *DATA.shape), schedule=SCHEDULE, sampler=name, steps=steps, generator=generator, **kw)
    return x, model.calls


@pytest.mark.parametrize("name", sorted(SAMPLERS))
class TestEverySampler:
    def test_shape_dtype_and_finite(self, name):
        x, _ = run(name, torch.Generator().manual_seed(0))
        assert x.shape == (4, *DATA.shape) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())

    def test_same_generator_same_output(self, name):
        a, _ = run(name, torch.Generator().manual_seed(3), eta=0.5)
        b, _ = run(name, torch.Generator().manual_seed(3), eta=0.5)
        c, _ = run(name, torch.Generator().manual_seed(4), eta=0.5)
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_per_image_generators_do_not_depend_on_the_batch(self, name):
        gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
        big, _ = run(name, gens([10, 11, 12, 13, 14]), n=5, eta=1.0)
        small, _ = run(name, gens([12, 13]), n=2, eta=1.0)
        torch.testing.assert_close(big[2:4], small, rtol=0, atol=1e-6)

    @pytest.mark.parametrize("steps", [1, 7, 20])
    def test_nfe_equals_documented_count(self, name, steps):
        _, calls = run(name, torch.Generator().manual_seed(0), steps=steps)
        assert calls == SAMPLERS[name].nfe(steps)

    @pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
    def test_every_prediction_type_gives_the_same_images(self, name, prediction):
        """The same exact model predicting x_0 or v instead of eps: the sampler must not care."""
        eps, _ = run(name, torch.Generator().manual_seed(5), eta=0.5)
        other, _ = run(name, torch.Generator().manual_seed(5), eta=0.5, prediction=prediction)
        torch.testing.assert_close(other, eps, rtol=0, atol=1e-4)

    def test_callback_sees_every_step(self, name):
        seen = []
        run(name, torch.Generator().manual_seed(0), steps=6, callback=lambda i, x, x0: seen.append((i, x.shape, x0.shape)))
        assert [i for i, _, _ in seen] == list(range(6))


@pytest.mark.parametrize("kwargs, match", [
    ({"sampler": "nope"}, "unknown sampler"),
    ({"steps": 0}, "steps must be between"),
    ({"steps": 1001}, "steps must be between"),
    ({"spacing": "weird"}, "unknown spacing"),
    ({"eta": -1.0}, "eta"),
    ({"prediction": "score"}, "unknown prediction"),
])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(NoisecraftError, match=match):
        sample(GaussianEpsModel(DATA, SCHEDULE), (2, *DATA.shape), schedule=SCHEDULE, **kwargs)


def test_learned_with_ddim_coefficients_is_ddim():
    a, _ = run("learned", torch.Generator().manual_seed(0), steps=7)
    b, _ = run("ddim", torch.Generator().manual_seed(0), steps=7)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_model_without_schedule_needs_one():
    with pytest.raises(NoisecraftError, match="schedule"):
        sample(lambda x, t: x, (1, 1, 2, 2))


def test_wrong_number_of_generators():
    with pytest.raises(NoisecraftError, match="one per image"):
        sample(GaussianEpsModel(DATA, SCHEDULE), (3, *DATA.shape), schedule=SCHEDULE,
               generator=[torch.Generator()] * 2)
