"""Reverse-time samplers for the OU forward process (beta = 1), k-diffusion style.

A sampler is a plain function of ``(score, x, times)``: ``score(x, t) -> (N, d)`` is any
score model of the marginal ``p_t``, ``x`` a draw from ``p_inf = N(0, I)`` at ``times[0]``,
and ``times`` a decreasing grid ending at ``t_min``. In reverse time ``tau = T - t``:
reverse SDE ``dY = [Y + 2 s(Y, t)] dtau + sqrt(2) dW`` (Euler-Maruyama) and probability-flow
ODE ``dY/dtau = Y + s(Y, t)`` (Heun).

Everything follows ``x``: the noise is drawn on its device in its dtype (a ``generator``
must be on that device). What ``score`` returns must have the shape of ``x`` and, when value
checks are on (:func:`samplegrad.set_validation`), be finite: a NaN is reported with the time
it appeared at instead of flowing into the samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from samplegrad._progress import progress
from samplegrad.spectral._checks import (
    check_count,
    check_generator,
    check_points,
    check_score_output,
    check_time,
    check_time_range,
    check_times_grid,
)

ScoreFn = Callable[[Tensor, float], Tensor]


def sampling_times(n_steps: int, t_max: float = 8.0, t_min: float = 1e-3,
                   device: torch.device | str | None = None) -> Tensor:
    """``n_steps + 1`` decreasing times, log-spaced from ``t_max`` to ``t_min`` (float64, on
    ``device``)."""
    n_steps = check_count(n_steps, "n_steps")
    t_min, t_max = check_time_range(t_min, t_max)
    return torch.logspace(math.log10(t_max), math.log10(t_min), n_steps + 1, dtype=torch.float64,
                          device=device)


def _check_score(score: object) -> None:
    if not callable(score):
        raise TypeError(f"score: must be a callable score(x, t), got {type(score).__name__}")


def _checked(score: ScoreFn) -> ScoreFn:
    return lambda x, t: check_score_output(score(x, t), x, "score", t)


def sample_reverse_sde(score: ScoreFn, x: Tensor, times: Tensor,
                       generator: torch.Generator | None = None, show_progress: bool = True,
                       ) -> Tensor:
    """Euler-Maruyama on the reverse SDE from ``times[0]`` down to ``times[-1]``: ``(N, d)``."""
    _check_score(score)
    check_points(x, "x")
    check_times_grid(times)
    check_generator(generator, x.device)
    return _reverse_sde(_checked(score), x, times, generator, show_progress)


def _reverse_sde(score: ScoreFn, x: Tensor, times: Tensor, generator: torch.Generator | None,
                 show_progress: bool) -> Tensor:
    ts = times.tolist()
    for t, t_next in progress(list(zip(ts[:-1], ts[1:])), desc="reverse SDE",
                              disable=None if show_progress else True):
        h = t - t_next
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        x = x + h * (x + 2 * score(x, t)) + math.sqrt(2 * h) * noise
    return x


def sample_probability_flow(score: ScoreFn, x: Tensor, times: Tensor,
                            show_progress: bool = True) -> Tensor:
    """Heun's method on the probability-flow ODE from ``times[0]`` to ``times[-1]``: ``(N, d)``."""
    _check_score(score)
    check_points(x, "x")
    check_times_grid(times)
    return _probability_flow(_checked(score), x, times, show_progress)


def _probability_flow(score: ScoreFn, x: Tensor, times: Tensor, show_progress: bool) -> Tensor:
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
    _check_score(score)
    check_points(x, "x")
    return _tweedie(_checked(score), x, check_time(t))


def _tweedie(score: ScoreFn, x: Tensor, t: float) -> Tensor:
    s = math.exp(-t)
    return (x + (1 - s * s) * score(x, t)) / s


def sample(model, n: int, n_steps: int = 100, sampler: str = "sde", t_max: float = 8.0,
           t_min: float = 1e-3, denoise: bool = False, generator: torch.Generator | None = None,
           show_progress: bool = True) -> Tensor:
    """Draw ``n`` samples in data space from a model with ``latent_score`` and ``affine``.

    Runs the sampler on the latent OU process from ``N(0, I)`` and decodes: ``(n, d)``, on
    the model's device (``generator``, if given, must be on it too).
    """
    if not (hasattr(model, "latent_score") and hasattr(model, "affine")):
        raise TypeError(f"model: must have latent_score and affine (a SpectralScoreModel or "
                        f"NeuralScoreModel), got {type(model).__name__}")
    n = check_count(n, "n")
    if sampler not in ("sde", "ode"):
        raise ValueError(f"sampler: must be 'sde' or 'ode', got {sampler!r}")
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise: must be True or False, got {denoise!r}")
    k = model.affine.W.shape[0]
    device = model.affine.W.device
    check_generator(generator, device)
    t_min, t_max = check_time_range(t_min, t_max)
    times = sampling_times(n_steps, t_max, t_min, device=device)
    y = torch.randn(n, k, dtype=torch.float64, device=device, generator=generator)
    raw = getattr(model, "_latent_score", model.latent_score)  # our own models: x is ours
    score = _checked(raw)
    if sampler == "sde":
        y = _reverse_sde(score, y, times, generator, show_progress)
    else:
        y = _probability_flow(score, y, times, show_progress)
    if denoise:
        y = _tweedie(score, y, t_min)
    return model.affine.decode(y)
