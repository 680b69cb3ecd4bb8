"""The embedded default data: scikit-learn's 8x8 handwritten digits (1797 images, in its wheel)."""

from __future__ import annotations

import torch


def load_digits(split: str = "all", *, binarize: bool = False, threshold: float = 0.5,
                test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 64)`` in [0, 1] (float32) and labels ``(N,)`` (int64).

    ``split`` is ``"train"``, ``"test"`` or ``"all"``; the split is a fixed random
    permutation (``seed``) with ``test_fraction`` of the images held out.
    ``binarize=True`` thresholds the intensities at ``threshold`` (values in {0, 1}).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.as_tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(d.target, dtype=torch.int64)
    if binarize:
        x = (x > threshold).float()
    if split == "all":
        return x, y
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return x[idx], y[idx]
