"""Reverse-time samplers for the OU forward process (beta = 1), k-diffusion style.

A sampler is a plain function of ``(score, x, times)``: ``score(x, t) -> (N, d)`` is any
score model of the marginal ``p_t``, ``x`` a draw from ``p_inf = N(0, I)`` at ``times[0]``,
and ``times`` a decreasing grid ending at ``t_min``. In reverse time ``tau = T - t``:
reverse SDE ``dY = [Y + 2 s(Y, t)] dtau + sqrt(2) dW`` (Euler-Maruyama) and probability-flow
ODE ``dY/dtau = Y + s(Y, t)`` (Heun).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from samplegrad._progress import progress

ScoreFn = Callable[[Tensor, float], Tensor]


def sampling_times(n_steps: int, t_max: float = 8.0, t_min: float = 1e-3) -> Tensor:
    """``n_steps + 1`` decreasing times, log-spaced from ``t_max`` to ``t_min`` (float64)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    return torch.logspace(math.log10(t_max), math.log10(t_min), n_steps + 1, dtype=torch.float64)


def sample_reverse_sde(score: ScoreFn, x: Tensor, times: Tensor,
                       generator: torch.Generator | None = None, show_progress: bool = True,
                       ) -> Tensor:
    """Euler-Maruyama on the reverse SDE from ``times[0]`` down to ``times[-1]``: ``(N, d)``."""
    ts = times.tolist()
    for t, t_next in progress(list(zip(ts[:-1], ts[1:])), desc="reverse SDE",
                              disable=None if show_progress else True):
        h = t - t_next
        noise = torch.randn(x.shape, dtype=x.dtype, generator=generator)
        x = x + h * (x + 2 * score(x, t)) + math.sqrt(2 * h) * noise
    return x


def sample_probability_flow(score: ScoreFn, x: Tensor, times: Tensor,
                            show_progress: bool = True) -> Tensor:
    """Heun's method on the probability-flow ODE from ``times[0]`` to ``times[-1]``: ``(N, d)``."""
    ts = times.tolist()
    for t, t_next in progress(list(zip(ts[:-1], ts[1:])), desc="probability flow",
                              disable=None if show_progress else True):
        h = t - t_next
        v = x + score(x, t)
        x_e = x + h * v
        x = x + 0.5 * h * (v + x_e + score(x_e, t_next))
    return x


def tweedie_denoise(score: ScoreFn, x: Tensor, t: float) -> Tensor:
    """``E[x_0 | x_t] = (x_t + (1 - e^{-2t}) s(x_t, t)) / e^{-t}``: a final denoising step."""
    s = math.exp(-t)
    return (x + (1 - s * s) * score(x, t)) / s


def sample(model, n: int, n_steps: int = 100, sampler: str = "sde", t_max: float = 8.0,
           t_min: float = 1e-3, denoise: bool = False, generator: torch.Generator | None = None,
           show_progress: bool = True) -> Tensor:
    """Draw ``n`` samples in data space from a model with ``latent_score`` and ``affine``.

    Runs the sampler on the latent OU process from ``N(0, I)`` and decodes: ``(n, d)``.
    """
    if sampler not in ("sde", "ode"):
        raise ValueError(f"sampler must be 'sde' or 'ode', got {sampler!r}")
    k = model.affine.W.shape[0]
    times = sampling_times(n_steps, t_max, t_min)
    y = torch.randn(n, k, dtype=torch.float64, generator=generator)
    score = model.latent_score
    if sampler == "sde":
        y = sample_reverse_sde(score, y, times, generator, show_progress)
    else:
        y = sample_probability_flow(score, y, times, show_progress)
    if denoise:
        y = tweedie_denoise(score, y, t_min)
    return model.affine.decode(y)
