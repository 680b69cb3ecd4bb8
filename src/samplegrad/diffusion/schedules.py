"""Variance schedules: a fine training schedule and its strided T-step sampling schedule.

Training uses ``n_train`` discrete timesteps (default 1000, betas linear in
[1e-4, 0.02], as in DDPM). A sampler with ``T`` steps strides it ("leading" spacing as in
DDIM): step ``j`` (``j = 0..T-1``) maps ``x_{j+1}`` to ``x_j`` at training timestep
``tau_j = floor(j * n_train / T)``, from ``alpha_bar(tau_j)`` to ``alpha_bar(tau_{j-1})``
(``alpha_bar = 1`` before ``tau_0``). Any other increasing set of training timesteps can be
given instead (``timesteps=``; e.g. a diffusers scheduler's, see
:mod:`samplegrad.diffusion.diffusers_adapter`).

Per-step Gaussian variance (shared by every model on the same schedule, so the path KL
between two models is a sum of squared mean differences): the DDPM posterior variance
``beta_tilde_j`` for ``j >= 1``; the last step (``j = 0``) has ``beta_tilde = 0``, so it gets
its own beta ``1 - alpha_bar(tau_0)`` (1e-4 for the linear schedule: noise std 0.01)
instead -- every step stays stochastic and the path KL stays finite.

Schedules are built on the device of the tensor they come from (``alpha_bars`` or
``betas``); :meth:`SamplerSchedule.to` moves them, and the samplers move them to the
samples' device themselves.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from samplegrad._config import check_int, check_real
from samplegrad._validation import validation_enabled

__all__ = ["SamplerSchedule", "alpha_bars_from_betas", "linear_alpha_bars",
           "sampling_schedule"]


def linear_alpha_bars(n_train: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                      *, device: torch.device | str | None = None) -> Tensor:
    """Cumulative products ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``, shape ``(n_train,)``,
    float64, on ``device`` (default: torch's default device)."""
    check_int(n_train, "n_train", 2)
    check_real(beta_start, "beta_start", gt=0, lt=1)
    check_real(beta_end, "beta_end", gt=0, lt=1)
    if not beta_start <= beta_end:
        raise ValueError(f"beta_end: must be >= beta_start ({beta_start}), got {beta_end}")
    betas = torch.linspace(beta_start, beta_end, n_train, dtype=torch.float64, device=device)
    return torch.cumprod(1.0 - betas, dim=0)


def _as_1d(values: Tensor | Sequence[float], name: str) -> Tensor:
    if not isinstance(values, Tensor):
        try:
            values = torch.as_tensor(values, dtype=torch.float64, device=None)  # default
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: must be a 1-d tensor or sequence of numbers, got "
                            f"{type(values).__name__}") from e
    if values.dim() != 1 or values.shape[0] < 2 or not (values.is_floating_point()):
        raise ValueError(f"{name}: must be a 1-d floating-point tensor of length >= 2, got "
                         f"shape {tuple(values.shape)} dtype {values.dtype}")
    return values.to(torch.float64)


def alpha_bars_from_betas(betas: Tensor | Sequence[float]) -> Tensor:
    """``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` from per-step ``betas`` ``(n_train,)``, each
    in (0, 1); float64 on ``betas``' device."""
    b = _as_1d(betas, "betas")
    if validation_enabled() and not bool(((b > 0) & (b < 1)).all()):
        raise ValueError("betas: every beta must lie in (0, 1) (and be finite)")
    return torch.cumprod(1.0 - b, dim=0)


class SamplerSchedule(NamedTuple):
    """A ``T``-step ancestral sampler; every field has shape ``(T,)``, indexed by step ``j``.

    ``x_j = coef_x[j] * x_{j+1} - coef_eps[j] * eps(x_{j+1}, timesteps[j]) + sigma[j] * z_j``.
    Build one with :func:`sampling_schedule` (from ``alphas_cumprod``),
    :meth:`from_betas`, or :func:`samplegrad.diffusion.diffusers_adapter.schedule_from_diffusers`.
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

    @property
    def device(self) -> torch.device:
        return self.timesteps.device

    def to(self, dtype: torch.dtype | None = None, *,
           device: torch.device | str | None = None) -> SamplerSchedule:
        """The same schedule with float fields in ``dtype`` (timesteps stay long) and/or
        every field on ``device``."""
        floats = (f.to(device=device, dtype=dtype) for f in tuple(self)[1:])
        return SamplerSchedule(self.timesteps.to(device), *floats)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor | Sequence[float],
                            n_steps: int | None = None, dtype: torch.dtype = torch.float32, *,
                            timesteps: Tensor | Sequence[int] | None = None
                            ) -> SamplerSchedule:
        """Same as :func:`sampling_schedule` (``alphas_cumprod`` is diffusers' name for
        ``alpha_bars``)."""
        return sampling_schedule(alphas_cumprod, n_steps, dtype, timesteps=timesteps)

    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float], n_steps: int | None = None,
                   dtype: torch.dtype = torch.float32, *,
                   timesteps: Tensor | Sequence[int] | None = None) -> SamplerSchedule:
        """The sampler of the training schedule with per-step ``betas`` ``(n_train,)``."""
        return sampling_schedule(alpha_bars_from_betas(betas), n_steps, dtype,
                                 timesteps=timesteps)


def _strided(n_train: int, n_steps: int | None, timesteps: Tensor | Sequence[int] | None,
             device: torch.device) -> Tensor:
    if timesteps is None:
        if n_steps is None:
            raise ValueError("n_steps: give the number of sampler steps T (or timesteps=)")
        if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) \
                or not 1 <= n_steps <= n_train:
            raise ValueError(f"n_steps: must be an int in [1, {n_train}], got {n_steps!r}")
        return torch.div(torch.arange(int(n_steps), device=device) * n_train, n_steps,
                         rounding_mode="floor")
    ts = timesteps if isinstance(timesteps, Tensor) else torch.as_tensor(timesteps,
                                                                          device=device)
    if ts.dim() != 1 or ts.numel() < 1 or ts.is_floating_point() or ts.dtype == torch.bool:
        raise ValueError(f"timesteps: must be a 1-d integer tensor of training timesteps, got "
                         f"shape {tuple(ts.shape)} dtype {ts.dtype}")
    ts = torch.sort(ts.to(device=device, dtype=torch.long)).values
    if n_steps is not None and n_steps != ts.numel():
        raise ValueError(f"n_steps: {n_steps!r} differs from len(timesteps) = {ts.numel()}")
    if validation_enabled():
        if int(ts[0]) < 0 or int(ts[-1]) >= n_train:
            raise ValueError(f"timesteps: must lie in [0, {n_train - 1}], got "
                             f"{int(ts[0])}..{int(ts[-1])}")
        if ts.numel() > 1 and not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError("timesteps: must be distinct")
    return ts


def sampling_schedule(alpha_bars: Tensor | Sequence[float], n_steps: int | None = None,
                      dtype: torch.dtype = torch.float32, *,
                      timesteps: Tensor | Sequence[int] | None = None) -> SamplerSchedule:
    """Stride the training schedule ``alpha_bars`` (a.k.a. ``alphas_cumprod``) ``(n_train,)``
    into ``n_steps`` steps ("leading" spacing), or use the given training ``timesteps`` (any
    order; sorted). Computed in float64 on ``alpha_bars``' device, returned in ``dtype``."""
    ab_all = _as_1d(alpha_bars, "alpha_bars")
    n_train = int(ab_all.shape[0])
    if validation_enabled():
        if not bool(((ab_all > 0) & (ab_all <= 1)).all()):
            raise ValueError("alpha_bars: every alpha_bar must lie in (0, 1] (and be finite)")
        if not bool((ab_all[1:] <= ab_all[:-1]).all()):
            raise ValueError("alpha_bars: must be non-increasing (cumulative products)")
    ts = _strided(n_train, n_steps, timesteps, ab_all.device)
    ab = ab_all[ts]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64, device=ab.device), ab[:-1]])
    alpha = ab / ab_prev
    beta = 1.0 - alpha
    if validation_enabled() and not bool((beta > 0).all()):
        raise ValueError("alpha_bars: alpha_bar must decrease strictly between the sampled "
                         "timesteps (and be < 1 at the first one)")
    coef_x = alpha.rsqrt()
    coef_eps = beta / (alpha.sqrt() * (1.0 - ab).sqrt())
    var = (1.0 - ab_prev) / (1.0 - ab) * beta
    var[0] = beta[0]
    sched = SamplerSchedule(ts.long(), ab, ab_prev, coef_x, coef_eps, var.sqrt())
    return sched.to(dtype)
