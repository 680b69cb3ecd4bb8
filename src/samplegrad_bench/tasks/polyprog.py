"""Polynomial programming: minimize ``E[mean_d |x_d - 0.45|^p]`` over binary ``x``.

Each of ``L`` variables is categorical over two classes with logits ``(L, 2)``; class 1
means ``x_d = 1``. The objective is separable, so its expectation is exact in closed form:
``E = mean_d (pi_d |1 - c|^p + (1 - pi_d) |c|^p)`` with ``pi_d = softmax(logits_d)[1]`` and
``c = 0.45``. Since ``|c| < |1 - c|`` the optimum sets every ``x_d = 0`` (``pi_d -> 0``) and
reaches ``c^p``; it is approached but never attained with finite logits.
"""

from __future__ import annotations

import torch

TARGET = 0.45


def _check(logits: torch.Tensor, power: float) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1 or logits.shape[-1] != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"logits must be a tensor shaped (..., L, 2), got {shape}")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}")


def loss(x: torch.Tensor, power: float, target: float = TARGET) -> torch.Tensor:
    """``mean_d |x_d - target|^power`` on one-hots ``(*S, L, 2)`` -> ``(*S,)`` (x_d = x[..., 1])."""
    _check(x, power)
    return ((x[..., 1] - target).abs() ** power).mean(-1)


def expected_loss(logits: torch.Tensor, power: float, target: float = TARGET) -> torch.Tensor:
    """Exact ``E[loss]`` under ``x_d ~ Cat(softmax(logits_d))``: ``(*B, L, 2)`` -> ``(*B,)``.

    Differentiable in ``logits`` (its gradient is the exact gradient of the expectation).
    """
    _check(logits, power)
    p1 = torch.softmax(logits, -1)[..., 1]
    return (p1 * abs(1 - target) ** power + (1 - p1) * abs(target) ** power).mean(-1)


def optimum(power: float, target: float = TARGET) -> float:
    """The infimum of ``E[loss]`` over logits: ``min(|target|, |1 - target|) ** power``."""
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}")
    return min(abs(target), abs(1 - target)) ** power
