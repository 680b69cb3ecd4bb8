"""Normalized probabilists' Hermite polynomials ``h_n = He_n / sqrt(n!)`` (orthonormal in N(0, 1)).

Evaluated by the three-term recurrence on the normalized polynomials,
``h_{n+1}(x) = (x h_n(x) - sqrt(n) h_{n-1}(x)) / sqrt(n + 1)``, so no factorial is ever
formed and high degrees neither overflow nor lose precision. Derivatives follow from
``h_n' = sqrt(n) h_{n-1}``. The linearization coefficients give products exactly:
``h_a h_b = sum_r L[a, b, a + b - 2r] h_{a + b - 2r}``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def hermite_table(x: Tensor, degree: int) -> Tensor:
    """``h_0(x) .. h_degree(x)``: ``x (...)`` -> ``(..., degree + 1)``, same dtype as ``x``."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree: must be an int >= 0, got {degree!r}")
    cols = [torch.ones_like(x)]
    if degree >= 1:
        cols.append(x)
    for n in range(1, degree):
        cols.append((x * cols[n] - math.sqrt(n) * cols[n - 1]) / math.sqrt(n + 1))
    return torch.stack(cols, dim=-1)


def derivative_table(table: Tensor, order: int = 1) -> Tensor:
    """``order``-th derivatives from a value table: ``h_n^(k) = sqrt(n!/(n-k)!) h_{n-k}``."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"order: must be an int >= 0, got {order!r}")
    n_max = table.shape[-1]
    out = torch.zeros_like(table)
    if order < n_max:
        n = torch.arange(order, n_max, dtype=torch.float64, device=table.device)
        scale = torch.exp(torch.lgamma(n + 1) - torch.lgamma(n - order + 1)).sqrt()
        out[..., order:] = table[..., : n_max - order] * scale.to(table.dtype)
    return out


def linearization_coeff(a: int, b: int, c: int) -> float:
    """Coefficient of ``h_c`` in ``h_a h_b``: ``sqrt(a! b! c!) / (r! (a-r)! (b-r)!)``."""
    if (a + b - c) % 2 or c < abs(a - b) or c > a + b:
        return 0.0
    r = (a + b - c) // 2
    lg = math.lgamma
    return math.exp(0.5 * (lg(a + 1) + lg(b + 1) + lg(c + 1))
                    - lg(r + 1) - lg(a - r + 1) - lg(b - r + 1))


def linearization_table(degree: int) -> Tensor:
    """``L[a, b, c]`` for ``a, b <= degree`` and ``c <= 2 degree`` (float64)."""
    L = torch.zeros(degree + 1, degree + 1, 2 * degree + 1, dtype=torch.float64, device="cpu")
    for a in range(degree + 1):
        for b in range(degree + 1):
            for r in range(min(a, b) + 1):
                L[a, b, a + b - 2 * r] = linearization_coeff(a, b, a + b - 2 * r)
    return L
