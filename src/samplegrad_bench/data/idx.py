"""Reader for the IDX format of MNIST / Fashion-MNIST (plain or .gz), and Fashion-MNIST paths."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or not) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_DTYPES[code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz); for tests."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())
    return path


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    return None


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """The folder holding Fashion-MNIST: ``root``, $SAMPLEGRAD_FASHION_MNIST, or Debian's path."""
    candidates = [root] if root is not None else [os.environ.get("SAMPLEGRAD_FASHION_MNIST"),
                                                   *FASHION_MNIST_DIRS]
    for c in candidates:
        if c and _find(Path(c), _FILES["train"][0]):
            return Path(c)
    raise FileNotFoundError(
        "Fashion-MNIST files not found (looked in "
        + ", ".join(str(c) for c in candidates if c)
        + "). Install Debian's package: `apt-get install dataset-fashion-mnist`, "
        "or point SAMPLEGRAD_FASHION_MNIST at a folder with the IDX .gz files."
    )


def load_idx_dataset(split: str = "train", root: str | Path | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 784)`` float32 in [0, 1] and labels ``(N,)`` int64 from an IDX folder."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = fashion_mnist_dir(root)
    img_stem, lab_stem = _FILES[split]
    img_path, lab_path = _find(folder, img_stem), _find(folder, lab_stem)
    if img_path is None or lab_path is None:
        raise FileNotFoundError(f"{folder}: missing {img_stem} or {lab_stem} (.gz)")
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))
