"""Fashion-MNIST 28x28 as an image task: data in [-1, 1], a small CNN classifier, FD-classifier.

* :func:`load_fashion`: images ``(N, 1, 28, 28)`` float32 in [-1, 1] and labels ``(N,)``
  int64 from the IDX files (Debian's ``dataset-fashion-mnist``, or
  ``$SAMPLEGRAD_FASHION_MNIST``; see :func:`samplegrad_bench.data.fashion_mnist_dir`).
* :func:`fashion_classifier`: :class:`FashionCNN` (two conv blocks, a 128-unit penultimate
  layer, 10 logits) trained here deterministically (seed 0, one thread) for two epochs of
  Adam on the train split with light augmentation (Gaussian pixel noise, so that it also
  scores diffusion samples), cached in the user cache (``classifier/``) and reloaded when
  present. ``.accuracy`` holds its test-split accuracy measured when it was trained.
* :func:`fd_classifier`: Frechet distance between Gaussian fits of the classifier's
  penultimate features (``.features``) of two image sets (an FID with this classifier in
  place of Inception): 0 for identical sets, growing as the sets drift apart.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from samplegrad.checkpoint import load_cache, save_checkpoint
from samplegrad_bench import paths
from samplegrad_bench._common import progress
from samplegrad_bench.data import fashion_mnist_dir, load_idx_dataset

__all__ = ["CLASSES", "FashionCNN", "fashion_classifier", "fd_classifier", "feature_stats",
           "frechet_distance", "load_fashion", "train_fashion_classifier"]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
_EPOCHS, _QUICK_STEPS, _QUICK_N = 2, 60, 2000
_VERSION = 1  # bump when the architecture or the training recipe changes


def load_fashion(split: str = "train", n: int | None = None, root: str | Path | None = None,
                 ) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` ("train" or "test"): images ``(N, 1, 28, 28)`` float32 in
    [-1, 1] and labels ``(N,)`` int64; ``n``: the first ``n`` of them."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n: must be an int >= 1 or None, got {n!r}")
    x, y = load_idx_dataset(split, root)
    if x.shape[1] != 28 * 28:
        raise ValueError(f"{split}: Fashion-MNIST images are 28x28, got {x.shape[1]} pixels")
    if n is not None:
        x, y = x[:n], y[:n]
    return x.reshape(-1, 1, 28, 28) * 2.0 - 1.0, y


def _check_images(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: must be images shaped (N, 1, 28, 28), got {shape}")


class FashionCNN(nn.Module):
    """Classifier of 28x28 images in [-1, 1]: ``(N, 1, 28, 28) -> (N, 10)`` logits.

    conv(16)-conv(16)-pool, conv(32)-pool, dense(128) (the :meth:`features`), dense(10).
    """

    def __init__(self, width: int = 16, feat: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, feat), nn.ReLU(),
        )
        self.head = nn.Linear(feat, 10)
        self.width, self.feat = width, feat
        self.accuracy: float = float("nan")

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(N, 1, 28, 28) -> (N, feat)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    right = sum(int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
                for i in range(0, len(x), batch))
    return right / max(len(x), 1)


def train_fashion_classifier(*, seed: int = 0, quick: bool = False, root: str | Path | None = None,
                             epochs: int = _EPOCHS, batch_size: int = 128,
                             lr: float = 2e-3) -> FashionCNN:
    """Train a :class:`FashionCNN` on the train split (deterministic for a given ``seed`` and
    thread count); ``quick``: 60 steps on the first 2000 images (for tests). Sets
    ``.accuracy`` on the test split."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    x, y = load_fashion("train", _QUICK_N if quick else None, root)
    model = FashionCNN()
    steps = _QUICK_STEPS if quick else epochs * (len(x) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(steps, 1))
    model.train()
    for _ in progress(range(steps), desc="fashion classifier"):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen, device="cpu")
        xb = x[idx]
        noise = 0.2 * torch.rand(len(idx), 1, 1, 1, generator=gen, device="cpu")
        xb = (xb + noise * torch.randn(xb.shape, generator=gen, device="cpu")).clamp(-1, 1)
        loss = nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval().requires_grad_(False)
    xt, yt = load_fashion("test", 1000 if quick else None, root)
    model.accuracy = _accuracy(model, xt, yt)
    return model


def _data_tag(root: str | Path | None) -> str:
    """A short key of the training data (folder and file sizes), so that fake data written by
    tests never serves for the real set or the reverse."""
    folder = fashion_mnist_dir(root)
    sizes = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
    return hashlib.sha1(repr((str(folder.resolve()), sizes)).encode()).hexdigest()[:10]


def fashion_classifier(*, quick: bool = False, seed: int = 0,
                       root: str | Path | None = None) -> FashionCNN:
    """The cached Fashion-MNIST classifier (eval mode, no gradients on its weights; trained
    on first use: a few minutes on one CPU thread, ``quick`` seconds). The weights live in
    the user cache's ``classifier/fashion_cnn_*.pt`` keyed by seed, quick and the data
    folder; ``.accuracy`` is its test accuracy."""
    tag = f"v{_VERSION}_seed{seed}{'_quick' if quick else ''}_{_data_tag(root)}"
    path = paths.cache_dir("classifier") / f"fashion_cnn_{tag}.pt"
    blob = load_cache(path, weights_only=True,
                      check=lambda b: (b["width"], b["feat"], b["state_dict"], b["accuracy"]))
    if blob is not None:
        model = FashionCNN(int(blob["width"]), int(blob["feat"]))
        model.load_state_dict(blob["state_dict"])
        model.accuracy = float(blob["accuracy"])
        return model.eval().requires_grad_(False)
    model = train_fashion_classifier(seed=seed, quick=quick, root=root)
    save_checkpoint(path, {"state_dict": model.state_dict(), "width": model.width,
                           "feat": model.feat, "accuracy": model.accuracy})
    return model


@torch.no_grad()
def feature_stats(x: Tensor, classifier: FashionCNN, batch: int = 500
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and covariance ``(F, F)`` (float64) of ``classifier.features`` over the
    images ``x`` ``(N, 1, 28, 28)``, N >= 2."""
    _check_images(x)
    if x.shape[0] < 2:
        raise ValueError(f"x: needs at least 2 images for a covariance, got {x.shape[0]}")
    p0 = next(classifier.parameters())
    f = torch.cat([classifier.features(x[i:i + batch].to(p0)) for i in range(0, len(x), batch)])
    f = f.double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)`` (symmetric PSD square
    roots by eigendecomposition; no complex parts)."""
    w, v = np.linalg.eigh(cov1)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1 @ cov2 @ s1
    wm = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(wm, 0, None)).sum())
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(d, 0.0)


def fd_classifier(samples: Tensor, reference: Tensor, classifier: FashionCNN) -> float:
    """FD-classifier: Frechet distance between Gaussian fits of ``classifier.features`` of
    ``samples`` and ``reference`` (both ``(N, 1, 28, 28)`` in [-1, 1], N >= 2; values
    outside [-1, 1] are clamped first, as an image would be)."""
    _check_images(samples, "samples")
    _check_images(reference, "reference")
    a = feature_stats(samples.detach().clamp(-1, 1), classifier)
    b = feature_stats(reference.detach().clamp(-1, 1), classifier)
    return frechet_distance(*a, *b)
