"""Gaussian-mixture potentials with learnable mixture logits, and the hexagon reward.

The Langevin experiment of Implicit Diffusion (docs/methods.md#langevin): six unit Gaussians
on a hexagon of radius 4, mixture weights ``softmax(theta)``, and a reward that favours the
upper-right region. Everything here is a pure function of tensors; the closed forms
(:func:`component_rewards`, :func:`mixture_reward`) give the exact ``E_{pi_theta}[R]``
without sampling noise, and :func:`mixture_kl` the KL divergence by grid quadrature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HEXAGON_THETA_INIT = (1.5, 0.0, 1.5, 0.0, 1.5, 0.0)
"""The paper's starting logits: weight on modes 1, 3, 5 (angles 0, 120, 240 degrees)."""

REWARD_CENTER = (4.0, 3.8)
REWARD_SCALE2 = 10.0  # exp(-||x - m||^2 / 20) = exp(-||x - m||^2 / (2 * 10))
REWARD_NORM = 2.5


def hexagon_centers(radius: float = 4.0, n: int = 6, dtype: torch.dtype = torch.float32) -> Tensor:
    """Centers ``(n, 2)``: ``c_1 = (radius, 0)``, then every ``360/n`` degrees."""
    angles = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return (radius * torch.stack([angles.cos(), angles.sin()], -1)).to(dtype)


def mixture_log_density(x: Tensor, theta: Tensor, centers: Tensor) -> Tensor:
    """Normalized ``log sum_k softmax(theta)_k N(x; c_k, I)`` for ``x (N, d)`` -> ``(N,)``."""
    sq = (x.unsqueeze(-2) - centers).pow(2).sum(-1)  # (N, K)
    d = centers.shape[-1]
    return torch.logsumexp(torch.log_softmax(theta, -1) - 0.5 * sq, -1) - 0.5 * d * math.log(
        2 * math.pi)


_HEXAGON = hexagon_centers(dtype=torch.float64)


def mixture_potential(x: Tensor, theta: Tensor, centers: Tensor | None = None) -> Tensor:
    """``V(x, theta) = -log sum_k softmax(theta)_k exp(-||x - c_k||^2 / 2)``: ``(N, d), (K,)
    -> (N,)``. Defaults to the hexagon centers. ``exp(-V)`` integrates to ``(2 pi)^{d/2}``
    for every ``theta``, so ``pi_theta`` has a theta-free normalizer.

    Computed as ``||x||^2 / 2 - logsumexp_k(log w_k - ||c_k||^2 / 2 + <x, c_k>)``: one matmul
    instead of an ``(N, K, d)`` difference tensor.
    """
    c = (_HEXAGON if centers is None else centers).to(x.dtype)
    a = torch.addmm(torch.log_softmax(theta, -1) - 0.5 * c.pow(2).sum(-1), x, c.T)  # (N, K)
    return 0.5 * x.pow(2).sum(-1) - torch.logsumexp(a, -1)


def hexagon_reward(x: Tensor) -> Tensor:
    """``R(x) = 1[x_1 >= 0] exp(-((x_1 - 4)^2 + (x_2 - 3.8)^2) / 20) / 2.5``: ``(N, 2) -> (N,)``.

    Differentiable where ``x_1 > 0`` (the smooth factor); the indicator has zero gradient.
    """
    m = torch.tensor(REWARD_CENTER, dtype=x.dtype, device=x.device)
    smooth = torch.exp(-(x - m).pow(2).sum(-1) / (2 * REWARD_SCALE2)) / REWARD_NORM
    return smooth * (x[..., 0] >= 0).to(x.dtype)


def _gauss_factor(c: Tensor, m: float, s2: float) -> tuple[Tensor, Tensor, Tensor]:
    """For z ~ N(c, 1): ``E[exp(-(z-m)^2/(2 s2))] = k`` and the tilted law N(mu, var)."""
    k = math.sqrt(s2 / (s2 + 1)) * torch.exp(-(c - m).pow(2) / (2 * (s2 + 1)))
    mu = (c * s2 + m) / (s2 + 1)
    var = s2 / (s2 + 1)
    return k, mu, torch.as_tensor(var, dtype=c.dtype)


def component_rewards(centers: Tensor | None = None) -> Tensor:
    """Exact ``E_{N(c_k, I)}[R]`` for each center ``(K, 2) -> (K,)`` (closed form).

    The reward and each component factorize over the two coordinates; the indicator on
    ``x_1`` turns one factor into a Gaussian CDF of the tilted law.
    """
    if centers is None:
        centers = hexagon_centers(dtype=torch.float64)
    c = centers.to(torch.float64)
    k1, mu1, var1 = _gauss_factor(c[:, 0], REWARD_CENTER[0], REWARD_SCALE2)
    k2, _, _ = _gauss_factor(c[:, 1], REWARD_CENTER[1], REWARD_SCALE2)
    cdf = 0.5 * torch.erfc(-mu1 / torch.sqrt(2 * var1))  # P(x_1 >= 0) under the tilted law
    return (k1 * cdf * k2 / REWARD_NORM).to(centers.dtype)


def mixture_reward(theta: Tensor, centers: Tensor | None = None) -> Tensor:
    """Exact ``E_{pi_theta}[R] = sum_k softmax(theta)_k r_k``: ``(..., K) -> (...)``."""
    r = component_rewards(centers).to(theta.dtype)
    return (torch.softmax(theta, -1) * r).sum(-1)


def mixture_kl(theta_p: Tensor, theta_q: Tensor, centers: Tensor | None = None,
               grid: int = 241, half_width: float = 9.0) -> float:
    """``KL(pi_{theta_p} || pi_{theta_q})`` by midpoint quadrature on a 2-D grid.

    With the default grid (spacing 0.075 on ``[-9, 9]^2``, the hexagon modes sit at radius 4)
    the quadrature error is far below 1e-4.
    """
    if centers is None:
        centers = hexagon_centers(dtype=torch.float64)
    centers = centers.to(torch.float64)
    if centers.shape[-1] != 2:
        raise ValueError(f"centers: mixture_kl integrates in 2-D, got shape {tuple(centers.shape)}")
    h = 2 * half_width / grid
    u = -half_width + h * (torch.arange(grid, dtype=torch.float64) + 0.5)
    xy = torch.cartesian_prod(u, u)
    lp = mixture_log_density(xy, theta_p.detach().to(torch.float64), centers)
    lq = mixture_log_density(xy, theta_q.detach().to(torch.float64), centers)
    return float((lp.exp() * (lp - lq)).sum() * h * h)
