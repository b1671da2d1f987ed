import pytest

from noisecraft.train.loop import TrainOptions, train


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A real (barely trained) digits model directory, shared by tests that only need the format."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    return train(TrainOptions(data="digits", out=str(out), batch_size=16, max_steps=4, checkpoint_every=4,
                              sample_every=0), log=lambda m: None, progress=False)


@pytest.fixture(scope="session")
def tiny_class_model_dir(tmp_path_factory):
    """A barely trained class-conditional digits model directory (classes "0" .. "9")."""
    out = tmp_path_factory.mktemp("models") / "tiny-class"
    return train(TrainOptions(data="digits", out=str(out), batch_size=16, max_steps=2, checkpoint_every=2,
                              sample_every=0, cond="class"), log=lambda m: None, progress=False)


@pytest.fixture(scope="session")
def tiny_sr_model_dir(tmp_path_factory):
    """A barely trained x4 super-resolution (SR3) digits model directory: 4x4 in, 16x16 out."""
    out = tmp_path_factory.mktemp("models") / "tiny-sr"
    return train(TrainOptions(data="digits", out=str(out), batch_size=16, max_steps=2, checkpoint_every=2,
                              sample_every=0, cond="superres", sr_factor=4), log=lambda m: None, progress=False)
