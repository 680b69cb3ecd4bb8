"""Rewards on 8x8 digit images ``(N, 64)`` in [0, 1]: brightness and a digit classifier.

``digit_classifier()`` is a small MLP (64 -> 128 -> 128 -> 10) trained deterministically in
a few seconds on ``load_digits("train")`` with augmentation (random binarization at a random
threshold, Gaussian pixel noise, clipping to [0, 1]) so that it also scores binarized digits
and diffusion samples. It is cached (user cache folder) and reloaded when present. Measured
held-out accuracy (``load_digits("test")``, 359 images, seed 0, 1 thread): 0.989 on the
grey-level digits and 0.958 on the binarized ones (kept as ``classifier.accuracy``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from samplegrad.checkpoint import load_cache, save_checkpoint
from samplegrad_bench import paths
from samplegrad_bench.data import load_digits

__all__ = ["DigitMLP", "brightness", "digit_classifier", "digit_log_prob", "train_classifier"]

_HIDDEN = 128
_STEPS = 1500


def _check_images(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != 64:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor shaped (N, 64), got {shape}")


def brightness(x: Tensor) -> Tensor:
    """Mean pixel intensity: ``(N, 64) -> (N,)``."""
    _check_images(x)
    return x.mean(dim=-1)


class DigitMLP(nn.Module):
    """MLP classifier for 8x8 digits: ``(N, 64)`` in [0, 1] -> logits ``(N, 10)``."""

    def __init__(self, hidden: int = _HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 10),
        )
        self.accuracy: dict[str, float] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random binarization (half the batch, threshold in [0.3, 0.7]) and Gaussian noise."""
    n = x.shape[0]
    thr = 0.3 + 0.4 * torch.rand(n, 1, generator=gen)
    binar = torch.rand(n, 1, generator=gen) < 0.5
    x = torch.where(binar, (x > thr).float(), x)
    noise_scale = 0.15 * torch.rand(n, 1, generator=gen)
    return (x + noise_scale * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return (model(x).argmax(-1) == y).float().mean().item()


def train_classifier(*, seed: int = 0, steps: int = _STEPS, batch_size: int = 256,
                     lr: float = 3e-3, hidden: int = _HIDDEN) -> DigitMLP:
    """Train a ``DigitMLP`` on the train split (deterministic for a given ``seed``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = load_digits("train")
    model = DigitMLP(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        loss = nn.functional.cross_entropy(model(_augment(x[idx], gen)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    xt, yt = load_digits("test")
    xb, _ = load_digits("test", binarize=True)
    model.accuracy = {"test": _accuracy(model, xt, yt), "test_binarized": _accuracy(model, xb, yt)}
    return model


def digit_classifier(cache_dir: str | Path | None = None, seed: int = 0,
                     steps: int = _STEPS) -> DigitMLP:
    """The cached digit classifier (trained on first use, a few seconds; eval mode).

    The weights live in ``cache_dir/digit_classifier_seed{seed}.pt`` (``..._steps{steps}.pt``
    for a non-default number of training steps; ``cache_dir`` defaults to the user cache's
    ``classifier/``, see :func:`samplegrad_bench.paths.cache_dir`); a present file is
    reloaded. ``.accuracy`` holds the held-out accuracies measured when it was trained.
    """
    tag = "" if steps == _STEPS else f"_steps{steps}"
    folder = paths.cache_dir("classifier") if cache_dir is None else Path(cache_dir)
    path = folder / f"digit_classifier_seed{seed}{tag}.pt"
    blob = load_cache(path, weights_only=True,
                      check=lambda b: (b["hidden"], b["state_dict"], b["accuracy"]))
    if blob is not None:  # missing or damaged (warned): trained again
        model = DigitMLP(int(blob["hidden"]))
        model.load_state_dict(blob["state_dict"])
        model.accuracy = {k: float(v) for k, v in blob["accuracy"].items()}
        model.eval()
        return model
    model = train_classifier(seed=seed, steps=steps)
    save_checkpoint(path, {"state_dict": model.state_dict(), "hidden": _HIDDEN,
                           "accuracy": model.accuracy})
    return model


def digit_log_prob(classifier: nn.Module, x: Tensor, digit: int) -> Tensor:
    """``log p(digit | x)`` under ``classifier``: ``(N, 64)`` in [0, 1] -> ``(N,)``.

    Differentiable in ``x`` (use it as a reward whose gradient flows to the images).
    """
    _check_images(x)
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    return torch.log_softmax(classifier(x), dim=-1)[:, int(digit)]
