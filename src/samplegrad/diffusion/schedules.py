"""Variance schedules: a fine training schedule and its strided T-step sampling schedule.

Training uses ``n_train`` discrete timesteps (default 1000, betas linear in
[1e-4, 0.02], as in DDPM). A sampler with ``T`` steps strides it ("leading" spacing as in
DDIM): step ``j`` (``j = 0..T-1``) maps ``x_{j+1}`` to ``x_j`` at training timestep
``tau_j = floor(j * n_train / T)``, from ``alpha_bar(tau_j)`` to ``alpha_bar(tau_{j-1})``
(``alpha_bar = 1`` before ``tau_0 = 0``).

Per-step Gaussian variance (shared by every model on the same schedule, so the path KL
between two models is a sum of squared mean differences): the DDPM posterior variance
``beta_tilde_j`` for ``j >= 1``; the last step (``j = 0``) has ``beta_tilde = 0``, so it gets
its own beta ``1 - alpha_bar(tau_0) = beta_0`` (1e-4: noise std 0.01) instead -- every step
stays stochastic and the path KL stays finite.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def linear_alpha_bars(n_train: int = 1000, beta_start: float = 1e-4,
                      beta_end: float = 0.02) -> Tensor:
    """Cumulative products ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``, shape ``(n_train,)``."""
    if n_train < 2:
        raise ValueError(f"n_train must be >= 2, got {n_train}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start, beta_end, n_train, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class SamplerSchedule(NamedTuple):
    """A ``T``-step ancestral sampler; every field has shape ``(T,)``, indexed by step ``j``.

    ``x_j = coef_x[j] * x_{j+1} - coef_eps[j] * eps(x_{j+1}, timesteps[j]) + sigma[j] * z_j``.
    """

    timesteps: Tensor  # long, training timestep tau_j fed to the network
    alpha_bar: Tensor  # alpha_bar(tau_j)
    alpha_bar_prev: Tensor  # alpha_bar(tau_{j-1}), 1 for j = 0
    coef_x: Tensor  # 1 / sqrt(alpha_j), alpha_j = alpha_bar / alpha_bar_prev
    coef_eps: Tensor  # beta_j / (sqrt(alpha_j) sqrt(1 - alpha_bar))
    sigma: Tensor  # per-step noise std (see module docstring)

    @property
    def n_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def to(self, dtype: torch.dtype | None = None, *,
           device: torch.device | str | None = None) -> SamplerSchedule:
        """The same schedule with float fields in ``dtype`` (timesteps stay long) and/or
        every field on ``device``."""
        floats = (f.to(device=device, dtype=dtype) for f in tuple(self)[1:])
        return SamplerSchedule(self.timesteps.to(device), *floats)


def sampling_schedule(alpha_bars: Tensor, n_steps: int,
                      dtype: torch.dtype = torch.float32) -> SamplerSchedule:
    """Stride the training schedule ``alpha_bars`` ``(n_train,)`` into ``n_steps`` steps."""
    n_train = int(alpha_bars.shape[0]) if alpha_bars.dim() == 1 else -1
    if n_train < 2:
        raise ValueError(f"alpha_bars must be a 1-d tensor of length >= 2, got "
                         f"{tuple(alpha_bars.shape)}")
    if not isinstance(n_steps, int) or not 1 <= n_steps <= n_train:
        raise ValueError(f"n_steps must be an int in [1, {n_train}], got {n_steps}")
    ab_all = alpha_bars.to(torch.float64)
    ts = torch.div(torch.arange(n_steps) * n_train, n_steps, rounding_mode="floor")
    ab = ab_all[ts]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    alpha = ab / ab_prev
    beta = 1.0 - alpha
    coef_x = alpha.rsqrt()
    coef_eps = beta / (alpha.sqrt() * (1.0 - ab).sqrt())
    var = (1.0 - ab_prev) / (1.0 - ab) * beta
    var[0] = beta[0]
    sched = SamplerSchedule(ts.long(), ab, ab_prev, coef_x, coef_eps, var.sqrt())
    return sched.to(dtype)
