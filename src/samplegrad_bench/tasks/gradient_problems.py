"""Small categorical problems whose expectation and gradient are exact by enumeration.

A :class:`GradientProblem` holds logits ``(L, K)`` and an objective ``f`` on one-hot
configurations ``(*S, L, K) -> (*S,)`` (the :func:`samplegrad.surrogate` contract); with
``K**L`` at most a few thousand, :meth:`GradientProblem.exact` gives the ground truth
``(E[f], grad_logits E[f])`` that every Monte Carlo estimator is measured against.

- ``quadratic``: ``f(x) = x^T A x + b^T x`` on the flattened one-hot ``x`` (``L*K``),
  ``A`` symmetric Gaussian scaled by ``1/sqrt(L K)``, ``b`` Gaussian.
- ``mlp``: ``f(x) = w2 . tanh(W1 x + b1)``, a random one-hidden-layer network.
Logits are Gaussian with standard deviation ``logit_scale``. Everything is drawn from a
``torch.Generator`` seeded by ``seed``, so a problem is a pure function of its arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import samplegrad as sg

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GradientProblem:
    """Logits ``(L, K)`` and an objective ``f: (*S, L, K) -> (*S,)``; exact truth on demand."""

    name: str
    logits: torch.Tensor
    f: Objective
    description: str = ""
    _truth: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def n_vars(self) -> int:
        return self.logits.shape[0]

    @property
    def n_classes(self) -> int:
        return self.logits.shape[1]

    def exact(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[f], d E[f] / d logits)`` by enumerating all ``K**L`` configurations (cached)."""
        if self._truth is None:
            with torch.no_grad():
                value, grad = sg.exact(self.f, self.logits)
            self._truth = (value.detach(), grad.detach())
        return self._truth


def _check(n_vars: int, n_classes: int, logit_scale: float) -> None:
    if n_vars < 1:
        raise ValueError(f"n_vars must be >= 1, got {n_vars}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if not logit_scale >= 0:
        raise ValueError(f"logit_scale must be >= 0, got {logit_scale}")


def _logits(gen: torch.Generator, n_vars: int, n_classes: int, scale: float) -> torch.Tensor:
    return scale * torch.randn(n_vars, n_classes, generator=gen, dtype=torch.float64).float()


def quadratic(n_vars: int = 4, n_classes: int = 5, seed: int = 0,
              logit_scale: float = 1.0) -> GradientProblem:
    """``f(x) = x^T A x + b^T x`` on flattened one-hots (a pairwise-interaction model)."""
    _check(n_vars, n_classes, logit_scale)
    gen = torch.Generator().manual_seed(seed)
    d = n_vars * n_classes
    m = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a = ((m + m.T) / (2 * d**0.5)).float()
    b = torch.randn(d, generator=gen, dtype=torch.float64).float()
    logits = _logits(gen, n_vars, n_classes, logit_scale)

    def f(x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(-2)
        return ((z @ a) * z).sum(-1) + z @ b

    return GradientProblem(f"quadratic_L{n_vars}_K{n_classes}", logits, f,
                           f"random quadratic, L={n_vars}, K={n_classes}, seed {seed}")


def mlp(n_vars: int = 4, n_classes: int = 5, hidden: int = 16, seed: int = 0,
        logit_scale: float = 1.0) -> GradientProblem:
    """``f(x) = w2 . tanh(W1 x + b1)`` on flattened one-hots (a random small MLP)."""
    _check(n_vars, n_classes, logit_scale)
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    gen = torch.Generator().manual_seed(seed)
    d = n_vars * n_classes
    w1 = (torch.randn(hidden, d, generator=gen, dtype=torch.float64) * (2 / n_vars) ** 0.5)
    b1 = torch.randn(hidden, generator=gen, dtype=torch.float64) * 0.5
    w2 = torch.randn(hidden, generator=gen, dtype=torch.float64) / hidden**0.5
    w1, b1, w2 = w1.float(), b1.float(), w2.float()
    logits = _logits(gen, n_vars, n_classes, logit_scale)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(-2) @ w1.T + b1) @ w2

    return GradientProblem(f"mlp_L{n_vars}_K{n_classes}", logits, f,
                           f"random tanh MLP {d}-{hidden}-1, L={n_vars}, K={n_classes}, "
                           f"seed {seed}")


PROBLEMS: dict[str, Callable[[int], GradientProblem]] = {
    "quadratic_L4_K5": lambda seed: quadratic(4, 5, seed=seed),
    "mlp_L4_K5": lambda seed: mlp(4, 5, seed=seed),
    "mlp_L10_K2": lambda seed: mlp(10, 2, seed=seed),
}


def get_problem(name: str, seed: int = 0) -> GradientProblem:
    """A named problem of :data:`PROBLEMS` (ValueError listing the names if unknown)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {list(PROBLEMS)}")
    return PROBLEMS[name](seed)
