"""VIMCO (Mnih & Rezende 2016): gradients of the multi-sample (IWAE) bound
``log (1/K) sum_k exp(log_w(x_k))``, ``x_k ~ Cat(softmax(logits))`` independent.

This is not an estimator of ``E[f]``: the objective is the bound itself, so it has its own
entry point, and the registry lists it under the kind ``"bound"`` (``surrogate`` refuses it
with a pointer here). The math is in ``docs/methods.md`` (section ``vimco``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from samplegrad.categorical._checks import (
    _integer,
    check_callable,
    check_generator,
    check_logits,
    check_objective_values,
    compute_dtype,
)
from samplegrad.categorical._sampling import sample_one_hot

LogWeight = Callable[[torch.Tensor], torch.Tensor]


def vimco_signals(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bound, signal)`` for log-weights ``(K, ...)``: ``bound = log mean_k exp(log_w_k)``
    and each sample's learning signal ``bound - log mean(exp of the others and, in place of
    its own, the arithmetic mean of the others' log-weights)`` (VIMCO's leave-one-out
    geometric-mean baseline). ``K >= 2``; values only (no graph)."""
    lw = log_w.detach()
    k = lw.shape[0]
    bound = torch.logsumexp(lw, 0) - math.log(k)
    others = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # mean of the other log-weights
    # replace sample k's log-weight by the others' mean, for each k: (K, K, ...)
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).reshape(k, k, *[1] * (lw.dim() - 1))
    swapped = torch.where(eye, others[:, None], lw[None])
    baseline = torch.logsumexp(swapped, 1) - math.log(k)
    return bound, bound[None] - baseline


def vimco(log_w: LogWeight, logits: torch.Tensor, n_samples: int = 4, *,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """A scalar surrogate whose value is the ``n_samples``-sample bound
    ``L = log (1/K) sum_k exp(log_w(x_k))`` (``K = n_samples >= 2``, ``x_k`` independent
    one-hot draws from ``Cat(softmax(logits))``) and whose ``backward()`` leaves VIMCO's
    unbiased estimate of ``d E[L] / d logits`` in ``logits.grad`` and the pathwise gradient
    ``sum_k softmax(log_w)_k d log_w(x_k)`` in the parameters inside ``log_w``.

    ``log_w`` takes one-hots ``(K, *logits.shape)`` and returns log-weights ``(K,)``, e.g.
    ``log p(x, z) - log q(z | x)``, or per-element ``(K, *logits.shape[:j])`` (one bound per
    element, e.g. per datapoint; the surrogate is their sum). The learning signal of sample
    ``k`` is ``L`` minus the bound with ``log_w_k`` replaced by the mean of the other
    log-weights. ``generator``: optional ``torch.Generator`` on ``logits``' device.
    """
    check_callable(log_w, "log_w")
    check_logits(logits)
    k = _integer(n_samples, "n_samples", 2)
    check_generator(generator, logits.device)
    dt = compute_dtype(logits)
    probs = torch.softmax(logits.detach().to(dt), -1)
    h = sample_one_hot(probs.expand(k, *probs.shape), generator).to(logits.dtype)
    lw = log_w(h)
    j = check_objective_values(lw, k, logits.shape, "log_w")
    logp = torch.log_softmax(logits.to(dt), -1)
    zero = torch.zeros((), dtype=dt, device=logits.device)
    lp = torch.where(h > 0, logp.expand_as(h), zero).flatten(1 + j).sum(-1)
    _, signal = vimco_signals(lw.to(dt))
    bound = torch.logsumexp(lw.to(dt), 0) - math.log(k)  # keeps log_w's graph
    lin = (signal * lp).sum()
    return (bound.sum() + lin - lin.detach()).to(logits.dtype)
