"""The Fashion-MNIST task (tasks/fashion.py) on fake IDX files: loading, the classifier and
FD-classifier. CI has no Fashion-MNIST; every test writes its own tiny folder."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplegrad_bench.data import write_idx
from samplegrad_bench.tasks import fashion as F


def _fake(folder, n_train=64, n_test=32, seed=0):
    """Two-class fake data that a CNN can tell apart: class 0 dark, class 1 bright (+ noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 2, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)) + 190 * y[:, None, None]
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", x.astype(np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", y)
        out[stem] = (x.astype(np.uint8), y)
    return out


@pytest.fixture
def fake(tmp_path, monkeypatch):
    arrays = _fake(tmp_path / "fashion")
    monkeypatch.setenv("SAMPLEGRAD_FASHION_MNIST", str(tmp_path / "fashion"))
    monkeypatch.setenv("SAMPLEGRAD_HOME", str(tmp_path / "home"))
    return arrays


def test_load_fashion_shapes_and_scaling(fake):
    x, y = F.load_fashion("train")
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw, labels = fake["train"]
    np.testing.assert_allclose(x.numpy()[:, 0], raw / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels)
    xt, yt = F.load_fashion("test", n=5)
    assert xt.shape == (5, 1, 28, 28) and yt.shape == (5,)


def test_load_fashion_maps_0_and_255_to_the_ends(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    img = np.zeros((2, 28, 28), np.uint8)
    img[1] = 255
    for stem in ("train", "t10k"):
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", img)
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", np.array([3, 7], np.uint8))
    x, _ = F.load_fashion("train", root=folder)
    assert float(x[0].min()) == -1.0 == float(x[0].max())
    assert float(x[1].min()) == 1.0 == float(x[1].max())


def test_load_fashion_missing_data_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        F.load_fashion(root=tmp_path / "nowhere")


@settings(max_examples=20, deadline=None)
@given(n=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=3)))
def test_load_fashion_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n:"):
        F.load_fashion(n=n, root="/nonexistent")


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 30), min_size=1, max_size=5))
def test_fd_classifier_rejects_non_image_shapes(shape):
    if len(shape) == 4 and shape[1:] == [1, 28, 28]:
        return
    net = F.FashionCNN()
    good = torch.zeros(3, 1, 28, 28)
    with pytest.raises(ValueError, match="samples"):
        F.fd_classifier(torch.zeros(shape), good, net)
    with pytest.raises(ValueError, match="reference"):
        F.fd_classifier(good, torch.zeros(shape), net)


def test_frechet_distance_matches_diagonal_gaussians():
    # diagonal covariances: FD = ||m1 - m2||^2 + sum (s1 - s2)^2
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 0.1])
    got = F.frechet_distance(m1, np.diag(s1**2), m2, np.diag(s2**2))
    assert got == pytest.approx(((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum(), rel=1e-9)
    # a rotated pair: the trace term is rotation invariant
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    c1, c2 = q @ np.diag(s1**2) @ q.T, q @ np.diag(s2**2) @ q.T
    assert F.frechet_distance(m1, c1, m1, c2) == pytest.approx(((s1 - s2) ** 2).sum(), rel=1e-6)


def test_fd_classifier_zero_for_itself_and_grows_with_a_shift():
    torch.manual_seed(0)
    net = F.FashionCNN().eval()
    gen = torch.Generator(device="cpu").manual_seed(1)
    a = torch.rand(300, 1, 28, 28, generator=gen, device="cpu") * 1.6 - 0.8
    b = torch.rand(300, 1, 28, 28, generator=gen, device="cpu") * 1.6 - 0.8  # same law
    same = F.fd_classifier(a, a, net)
    fresh = F.fd_classifier(a, b, net)
    shifted = F.fd_classifier(a, (b + 0.5).clamp(-1, 1), net)
    assert same < 1e-6 * max(fresh, 1e-12) + 1e-9
    assert fresh > 0
    assert shifted > 3 * fresh  # a brightness shift is far beyond resampling noise


def test_classifier_trains_caches_and_reloads(fake):
    torch.manual_seed(0)
    net = F.fashion_classifier(quick=True)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x, y = F.load_fashion("test")
    assert net(x).shape == (32, 10) and net.features(x).shape == (32, net.feat)
    assert net.accuracy > 0.9  # the two fake classes differ by 190 grey levels
    files = list((F.paths.cache_dir("classifier")).glob("fashion_cnn_*quick*.pt"))
    assert len(files) == 1
    again = F.fashion_classifier(quick=True)  # loaded, not retrained
    assert again.accuracy == net.accuracy
    for (k, v), (k2, v2) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    fresh = F.train_fashion_classifier(quick=True)  # the same recipe: the same weights
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in net.state_dict().items())
