"""One common test class run over every sampler in the registry."""
import pytest
import torch

from noisecraft import NoiseSchedule, NoisecraftError, SAMPLERS, sample
from tests.analytic import GaussianData, GaussianEpsModel

SCHEDULE = NoiseSchedule.linear()
DATA = GaussianData()


def run(name, generator, n=4, steps=10, **kw):
    model = GaussianEpsModel(DATA, SCHEDULE)
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


def test_model_without_schedule_needs_one():
    with pytest.raises(NoisecraftError, match="schedule"):
        sample(lambda x, t: x, (1, 1, 2, 2))


def test_wrong_number_of_generators():
    with pytest.raises(NoisecraftError, match="one per image"):
        sample(GaussianEpsModel(DATA, SCHEDULE), (3, *DATA.shape), schedule=SCHEDULE,
               generator=[torch.Generator()] * 2)
