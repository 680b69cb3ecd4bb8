"""DDPM as plain functions (k-diffusion style): training loss, one ancestral step, sampler.

The noise model is any callable ``eps = model(x, t)``: ``x`` ``(N, *shape)`` samples of any
event shape (``(N, d)`` vectors, ``(N, C, H, W)`` images, ...), ``t`` ``(N,)`` long training
timesteps on ``x``'s device, ``eps`` shaped like ``x``.

Noise is explicit so that a path can be replayed: a sampler run is a function of a noise
tensor ``noise`` ``(T + 1, N, *shape)``: ``noise[T]`` is ``x_T`` and ``noise[j]`` is the
noise of step ``j`` (``x_{j+1} -> x_j``). A path is ``(T + 1, N, *shape)`` with
``path[j] = x_j``. Everything runs on the device and in the dtype of the samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from samplegrad.diffusion._checks import (
    check_finite,
    check_generator,
    check_tensor,
    event_shape,
    shape_str,
)
from samplegrad.diffusion.schedules import SamplerSchedule

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""``eps = model(x (N, *shape), t (N,) long) -> (N, *shape)``."""

__all__ = ["EpsModel", "ddpm_loss", "ddpm_step", "draw_noise", "predict_eps", "sample",
           "sample_path", "step_mean"]


def predict_eps(model: EpsModel, x: Tensor, t: Tensor) -> Tensor:
    """``model(x, t)``, checked: a tensor shaped like ``x`` (always), finite (when value
    checks are on, :func:`samplegrad.validation_enabled`)."""
    eps = model(x, t)
    if not isinstance(eps, Tensor) or eps.shape != x.shape:
        raise ValueError(f"model: a noise model must return eps shaped like its input x "
                         f"{tuple(x.shape)}, got {shape_str(eps)}")
    check_finite(eps, "model", "returned non-finite values (NaN or inf)")
    return eps


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """Per-row coefficients ``(N,)`` as ``(N, 1, ..., 1)`` in ``x``'s dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _on(sched: SamplerSchedule, device: torch.device) -> SamplerSchedule:
    if not isinstance(sched, SamplerSchedule):
        raise TypeError(f"sched: must be a SamplerSchedule (see sampling_schedule), got "
                        f"{type(sched).__name__}")
    return sched if sched.timesteps.device == device else sched.to(device=device)


def ddpm_loss(model: EpsModel, x0: Tensor, alpha_bars: Tensor,
              generator: torch.Generator | None = None, *, shard: slice | None = None) -> Tensor:
    """Mean squared noise-prediction error at uniform random timesteps (DDPM's L_simple).

    ``x0`` ``(N, *shape)`` clean data (scaled to [-1, 1]); ``alpha_bars`` ``(n_train,)``. The
    timesteps and noise are drawn on ``x0``'s device (``generator`` must live there).
    ``shard`` (data parallelism, see :mod:`samplegrad.distributed`): ``x0`` is the global
    batch, timesteps and noise are drawn for all of it, and only the items ``x0[shard]`` go
    through the model; the result is their share of the global mean (summed over the ranks'
    shards: the one-process loss).
    """
    check_tensor(x0, "x0", floating=True)
    if x0.dim() < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0: must be shaped (N, *shape) with N >= 1, got {tuple(x0.shape)}")
    check_tensor(alpha_bars, "alpha_bars")
    if alpha_bars.dim() != 1 or alpha_bars.shape[0] < 1:
        raise ValueError(f"alpha_bars: must be 1-d (n_train,), got {tuple(alpha_bars.shape)}")
    check_generator(generator, x0.device)
    n = x0.shape[0]
    t = torch.randint(0, alpha_bars.shape[0], (n,), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = _bcast(alpha_bars.to(x0.device)[t], x0)
    if shard is not None:
        x0, eps, t, ab = x0[shard], eps[shard], t[shard], ab[shard]
    xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
    err = (predict_eps(model, xt, t) - eps).pow(2)
    if shard is None:
        return err.mean()
    return err.sum() / (n * err[0].numel()) if err.shape[0] else err.sum()


def step_mean(model: EpsModel, x: Tensor, step: Tensor | int, sched: SamplerSchedule) -> Tensor:
    """Mean ``mu_theta(x_{j+1}, j)`` of the ancestral step ``j``; ``x`` ``(N, *shape)``.

    ``step`` is one step index or one per row ``(N,)`` (a batch of populations at different
    stages of the sampler, advanced by a single network call). The network gets the
    timesteps on ``x``'s device.
    """
    n = x.shape[0]
    j = torch.as_tensor(step, dtype=torch.long, device=sched.timesteps.device).expand(n)
    eps = predict_eps(model, x, sched.timesteps[j].to(x.device))
    return _bcast(sched.coef_x[j], x) * x - _bcast(sched.coef_eps[j], x) * eps


def ddpm_step(model: EpsModel, x: Tensor, step: Tensor | int, sched: SamplerSchedule,
              noise: Tensor) -> Tensor:
    """One ancestral step ``x_{j+1} -> x_j = mu_theta(x_{j+1}, j) + sigma_j * noise``."""
    j = torch.as_tensor(step, dtype=torch.long, device=sched.timesteps.device).expand(x.shape[0])
    return step_mean(model, x, j, sched) + _bcast(sched.sigma[j], x) * noise


def draw_noise(sched: SamplerSchedule, n: int, shape: int | tuple[int, ...],
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, *,
               device: torch.device | str | None = None) -> Tensor:
    """Standard normal noise for one sampler run: ``(T + 1, n, *shape)`` on ``device``
    (default: the generator's device, else torch's default device)."""
    if not isinstance(sched, SamplerSchedule):
        raise TypeError(f"sched: must be a SamplerSchedule, got {type(sched).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be an int >= 1, got {n!r}")
    shape = event_shape(shape)
    if device is None and generator is not None:
        device = generator.device
    if generator is not None and device is not None:
        check_generator(generator, torch.device(device))
    return torch.randn(sched.n_steps + 1, n, *shape, generator=generator, dtype=dtype,
                       device=device)


def _check_noise(noise: Tensor, sched: SamplerSchedule) -> None:
    check_tensor(noise, "noise", floating=True)
    if noise.dim() < 3 or noise.shape[0] != sched.n_steps + 1:
        raise ValueError(f"noise: must be shaped (T + 1, N, *shape) with T = {sched.n_steps}, "
                         f"got {tuple(noise.shape)}")
    check_finite(noise, "noise")


def sample_path(model: EpsModel, noise: Tensor, sched: SamplerSchedule) -> Tensor:
    """Run the T-step ancestral sampler on ``noise`` ``(T+1, N, *shape)``; the path, same shape.

    Differentiable when the model is (autograd keeps the whole unrolled graph).
    """
    sched = _on(sched, noise.device) if isinstance(noise, Tensor) else sched
    _check_noise(noise, sched)
    xs = [noise[-1]]
    for j in reversed(range(sched.n_steps)):
        xs.append(ddpm_step(model, xs[-1], j, sched, noise[j]))
    return torch.stack(xs[::-1])


def sample(model: EpsModel, noise: Tensor, sched: SamplerSchedule) -> Tensor:
    """The final sample ``x_0`` ``(N, *shape)`` of the sampler run on ``noise``."""
    sched = _on(sched, noise.device) if isinstance(noise, Tensor) else sched
    _check_noise(noise, sched)
    x = noise[-1]
    for j in reversed(range(sched.n_steps)):
        x = ddpm_step(model, x, j, sched, noise[j])
    return x
