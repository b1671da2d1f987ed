import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noisecraft.errors import NoisecraftError
from noisecraft.eval import features as feats
from noisecraft.eval.features import dataset_features, efficientnet_lite0, extract, feature_net
from noisecraft.eval.inception import FIDInceptionV3, load_fid_inception


@pytest.fixture(scope="module")
def lite():
    return efficientnet_lite0()


def test_imagenet_weights_and_preprocessing_recognise_a_cat(lite):
    from skimage.data import chelsea

    x = torch.from_numpy(np.asarray(chelsea())).permute(2, 0, 1)[None].float() / 127.5 - 1     # (1, 3, H, W)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = lite.net.net(x).argmax(1).item()            # the full classifier behind the feature trunk
    assert 281 <= top <= 285                               # ImageNet's domestic cats


def test_features_shape_grey_as_rgb_and_any_size(lite):
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(3, 1, 20, 20, generator=g) * 2 - 1
    f = extract(lite, grey, batch_size=2)
    assert f.shape == (3, 1280) and f.dtype == torch.float64 and torch.isfinite(f).all()
    assert torch.allclose(f, extract(lite, grey.expand(-1, 3, -1, -1)), atol=1e-6)
    with pytest.raises(NoisecraftError, match="channels"):
        lite(torch.zeros(1, 2, 8, 8))


def test_dataset_features_are_cached_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path))
    net = efficientnet_lite0(resolution=32)
    totals = []
    a = dataset_features(net, "digits", "test", 40, 8, 1, on_total=totals.append)
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 1
    monkeypatch.setattr("noisecraft.data.load_dataset", lambda *a, **k: pytest.fail("the cache was not used"))
    b = dataset_features(net, "digits", "test", 40, 8, 1, on_total=totals.append)
    assert totals == [40] and torch.equal(a, b)
    monkeypatch.undo()
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path))
    c = dataset_features(net, "digits", "test", 30, 8, 1)       # another n: another entry
    assert len(c) == 30 and len(list((tmp_path / "features").glob("*.safetensors"))) == 2


def test_folder_cache_key_changes_when_the_folder_changes(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    before = feats.source_fingerprint(str(tmp_path))
    Image.new("L", (8, 8), 255).save(tmp_path / "b.png")
    assert feats.source_fingerprint(str(tmp_path)) != before
    assert feats.source_fingerprint("digits") == "digits"


def test_inception_weights_missing_or_bad_file_are_clear_errors(tmp_path):
    with pytest.raises(NoisecraftError, match="does not exist"):
        feature_net(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(NoisecraftError, match="not a readable PyTorch weights file"):
        load_fid_inception(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(NoisecraftError, match="not the FID Inception-v3"):
        load_fid_inception(wrong)


def test_inception_loads_a_file_with_the_standard_parameter_names(tmp_path):
    # A file laid out like pt_inception-2015-12-05 (same names and shapes; random values, as the real one
    # is not shipped): it loads with weights_only and gives 2048-d features, grey and any size accepted.
    torch.manual_seed(0)
    path = tmp_path / "pt_inception.pth"
    torch.save({k: v for k, v in FIDInceptionV3().state_dict().items() if "num_batches" not in k}, path)
    net = feature_net(path)
    assert net.num_features == 2048 and net.name.startswith("inception-v3-fid-")
    f = extract(net, torch.rand(2, 1, 28, 28) * 2 - 1)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
