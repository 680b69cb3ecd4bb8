"""The IDX reader/writer and the Fashion-MNIST folder loader on tiny files written here."""

import gzip

import numpy as np
import pytest
import torch

from samplegrad_bench.data import fashion_mnist_dir, load_idx_dataset, read_idx, write_idx


def _fake_fashion(folder, n_train=6, n_test=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        write_idx(folder / (stem + ext), arr)
    return arrays


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_read_roundtrip(tmp_path, name):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    back = read_idx(write_idx(tmp_path / name, arr))
    assert back.shape == (2, 3, 5) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, arr)


def test_read_idx_header_by_hand(tmp_path):
    # magic 0x00000803 (uint8, 3 dims), dims 1x2x2, then the 4 values: the IDX spec itself
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 255])
    with gzip.open(tmp_path / "x.gz", "wb") as fh:
        fh.write(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), [[[1, 2], [3, 255]]])


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="expected 5"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dataset_tiny_folder(tmp_path, gz):
    arrays = _fake_fashion(tmp_path, gz=gz)
    x, y = load_idx_dataset("train", tmp_path)
    assert x.shape == (6, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = arrays["train-images-idx3-ubyte"].reshape(6, -1).astype(np.float32) / 255.0
    np.testing.assert_allclose(x.numpy(), expected)
    np.testing.assert_array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])
    xt, yt = load_idx_dataset("test", tmp_path)
    assert xt.shape == (4, 784) and yt.shape == (4,)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_env_variable_points_at_folder(tmp_path, monkeypatch):
    _fake_fashion(tmp_path)
    monkeypatch.setenv("SAMPLEGRAD_FASHION_MNIST", str(tmp_path))
    assert fashion_mnist_dir() == tmp_path
    assert load_idx_dataset("test")[0].shape == (4, 784)


def test_missing_files_error_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_idx_dataset("train", tmp_path / "nowhere")
    # train files present, test files missing: the error names what is missing
    _fake_fashion(tmp_path)
    for stem in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / stem).unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_idx_dataset("test", tmp_path)


def test_bad_split_and_count_mismatch(tmp_path):
    _fake_fashion(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_idx_dataset("valid", tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        load_idx_dataset("train", tmp_path)
