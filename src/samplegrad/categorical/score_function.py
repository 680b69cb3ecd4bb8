"""Score-function estimators: REINFORCE (optional baseline) and RLOO.

Both return a surrogate loss: its value is the Monte Carlo estimate of ``E[f]`` and its
``backward()`` leaves the estimator's gradient in ``logits.grad`` (and the pathwise gradient
of ``f``'s own parameters, if any).
"""

from __future__ import annotations

import torch

from samplegrad.categorical._checks import (
    Objective,
    check_baseline,
    check_callable,
    check_generator,
    check_logits,
    check_n_samples,
    check_objective_values,
    compute_dtype,
)
from samplegrad.categorical._sampling import sample_one_hot


def _draw(f: Objective, logits: torch.Tensor, n_samples: int,
          generator: torch.Generator | None):
    probs = torch.softmax(logits.detach().to(compute_dtype(logits)), -1)
    h = sample_one_hot(probs.expand(n_samples, *probs.shape), generator).to(logits.dtype)
    fx = f(h)
    j = check_objective_values(fx, n_samples, logits.shape)
    logp = torch.log_softmax(logits, -1)
    # log-probability of each configuration (of each leading batch element when f returns
    # per-element values); masked (-inf) classes are never drawn
    lp = torch.where(h > 0, logp.expand_as(h), torch.zeros_like(h)).flatten(1 + j).sum(-1)
    return fx, lp


def reinforce(f: Objective, logits: torch.Tensor, n_samples: int = 1,
              baseline: float | torch.Tensor | None = None, *,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """REINFORCE surrogate ``mean f + mean (f - b) (log p - log p.detach())``.

    ``f``: one-hot ``(n_samples, *logits.shape)`` -> ``(n_samples,)``, or per-element values
    ``(n_samples, *logits.shape[:j])`` (each element scored with its own log-probability; the
    loss is their sum). ``baseline`` is a number or a tensor (scalar, or broadcastable to the
    per-element values) not depending on the samples (e.g. an EMA of past values kept by
    the caller); ``None`` means no baseline. Unbiased for any such baseline; a non-finite
    baseline is a ``ValueError`` (for a tensor, when validation is on). ``generator``:
    optional ``torch.Generator`` on ``logits``' device for the draws. ``f`` returning
    non-finite values is a ``ValueError`` naming ``f`` (when validation is on).
    """
    check_callable(f)
    check_logits(logits)
    n_samples = check_n_samples(n_samples)
    b = check_baseline(baseline)
    check_generator(generator, logits.device)
    fx, lp = _draw(f, logits, n_samples, generator)
    adv = (fx.detach() - b)
    return (fx + adv * (lp - lp.detach())).mean(0).sum()


def rloo(f: Objective, logits: torch.Tensor, n_samples: int = 4, *,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019): each sample's baseline is the mean of the
    other ``n_samples - 1`` values (per element when ``f`` returns per-element values, see
    :func:`reinforce`). ``n_samples >= 2``. Unbiased. ``generator`` as in :func:`reinforce`."""
    check_callable(f)
    check_logits(logits)
    n_samples = check_n_samples(n_samples, minimum=2)
    check_generator(generator, logits.device)
    fx, lp = _draw(f, logits, n_samples, generator)
    v = fx.detach()
    adv = v - (v.sum(0) - v) / (n_samples - 1)
    return (fx + adv * (lp - lp.detach())).mean(0).sum()
