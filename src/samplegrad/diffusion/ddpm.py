"""DDPM as plain functions (k-diffusion style): training loss, one ancestral step, sampler.

Noise is explicit so that a path can be replayed: a sampler run is a function of a noise
tensor ``noise`` ``(T + 1, N, d)``: ``noise[T]`` is ``x_T`` and ``noise[j]`` is the noise of
step ``j`` (``x_{j+1} -> x_j``). A path is ``(T + 1, N, d)`` with ``path[j] = x_j``.
``model(x, t)`` predicts the noise; ``t`` is the integer training timestep per row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from samplegrad.diffusion.schedules import SamplerSchedule

EpsModel = Callable[[Tensor, Tensor], Tensor]


def ddpm_loss(model: EpsModel, x0: Tensor, alpha_bars: Tensor,
              generator: torch.Generator | None = None) -> Tensor:
    """Mean squared noise-prediction error at uniform random timesteps (DDPM's L_simple).

    ``x0`` ``(N, d)`` clean data (scaled to [-1, 1]); ``alpha_bars`` ``(n_train,)``. The
    timesteps and noise are drawn on ``x0``'s device (``generator`` must live there).
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be shaped (N, d), got {tuple(x0.shape)}")
    n = x0.shape[0]
    t = torch.randint(0, alpha_bars.shape[0], (n,), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bars.to(x0)[t][:, None]
    xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
    return (model(xt, t) - eps).pow(2).mean()


def step_mean(model: EpsModel, x: Tensor, step: Tensor | int, sched: SamplerSchedule) -> Tensor:
    """Mean ``mu_theta(x_{j+1}, j)`` of the ancestral step ``j``; ``x`` ``(N, d)``.

    ``step`` is one step index or one per row ``(N,)`` (a batch of populations at different
    stages of the sampler, advanced by a single network call). The network gets the
    timesteps on ``x``'s device.
    """
    n = x.shape[0]
    j = torch.as_tensor(step, dtype=torch.long, device=sched.timesteps.device).expand(n)
    eps = model(x, sched.timesteps[j].to(x.device))
    return sched.coef_x[j, None].to(x) * x - sched.coef_eps[j, None].to(x) * eps


def ddpm_step(model: EpsModel, x: Tensor, step: Tensor | int, sched: SamplerSchedule,
              noise: Tensor) -> Tensor:
    """One ancestral step ``x_{j+1} -> x_j = mu_theta(x_{j+1}, j) + sigma_j * noise``."""
    j = torch.as_tensor(step, dtype=torch.long, device=sched.timesteps.device).expand(x.shape[0])
    return step_mean(model, x, j, sched) + sched.sigma[j, None].to(x) * noise


def draw_noise(sched: SamplerSchedule, n: int, dim: int = 64,
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, *,
               device: torch.device | str | None = None) -> Tensor:
    """Standard normal noise for one sampler run: ``(T + 1, n, dim)`` on ``device`` (default:
    the generator's device, else the CPU)."""
    if device is None and generator is not None:
        device = generator.device
    return torch.randn(sched.n_steps + 1, n, dim, generator=generator, dtype=dtype,
                       device=device)


def _check_noise(noise: Tensor, sched: SamplerSchedule) -> None:
    if noise.dim() != 3 or noise.shape[0] != sched.n_steps + 1:
        raise ValueError(f"noise must be shaped (T + 1, N, d) with T = {sched.n_steps}, "
                         f"got {tuple(noise.shape)}")


def sample_path(model: EpsModel, noise: Tensor, sched: SamplerSchedule) -> Tensor:
    """Run the T-step ancestral sampler on ``noise`` ``(T+1, N, d)``; the path ``(T+1, N, d)``.

    Differentiable when the model is (autograd keeps the whole unrolled graph).
    """
    _check_noise(noise, sched)
    xs = [noise[-1]]
    for j in reversed(range(sched.n_steps)):
        xs.append(ddpm_step(model, xs[-1], j, sched, noise[j]))
    return torch.stack(xs[::-1])


def sample(model: EpsModel, noise: Tensor, sched: SamplerSchedule) -> Tensor:
    """The final sample ``x_0`` ``(N, d)`` of the sampler run on ``noise``."""
    _check_noise(noise, sched)
    x = noise[-1]
    for j in reversed(range(sched.n_steps)):
        x = ddpm_step(model, x, j, sched, noise[j])
    return x
