"""Datasets: the embedded 8x8 digits and an IDX reader for (Fashion-)MNIST."""

from samplegrad_bench.data.digits import load_digits
from samplegrad_bench.data.idx import fashion_mnist_dir, load_idx_dataset, read_idx, write_idx

__all__ = ["fashion_mnist_dir", "load_digits", "load_idx_dataset", "read_idx", "write_idx"]
