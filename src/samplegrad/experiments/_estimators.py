"""The estimators every benchmark compares: ours (``samplegrad.methods()``) plus peers.

Benchmarks call :func:`estimate` with a name from :func:`bench_methods`; for our own
methods it is :func:`samplegrad.surrogate`, for the peer PyPI ``redge`` 0.1.0 (installed by
the ``[bench]`` extra) it runs the peer's sampler as a pathwise estimator under the same
contract (value = Monte Carlo estimate of ``E[f]``, ``backward()`` fills ``logits.grad``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import samplegrad as sg
from samplegrad.categorical._checks import check_objective_values
from samplegrad.categorical.registry import get_method

PEER_REDGE = "peer_redge"
# peer name -> (call(logits, **knobs) -> one-hot sample with gradient, default knobs)
_PEER_DEFAULTS: dict[str, dict[str, Any]] = {PEER_REDGE: {"n_steps": 5, "t1": 0.5}}


def peer_available() -> bool:
    """Whether the PyPI ``redge`` 0.1.0 package is importable."""
    try:
        import redge  # noqa: F401
    except ImportError:
        return False
    return True


def bench_methods(include_peer: bool = True, include_exact: bool = False) -> list[str]:
    """Our registered estimators (minus ``exact`` unless asked) and the peer when installed."""
    names = [m for m in sg.methods() if include_exact or m != "exact"]
    if include_peer and peer_available():
        names.append(PEER_REDGE)
    return names


def default_knobs(name: str) -> dict[str, Any]:
    """The default knobs of ``name`` (a copy), e.g. ``{"n_steps": 5, "t1": 0.5}``."""
    if name in _PEER_DEFAULTS:
        return dict(_PEER_DEFAULTS[name])
    return dict(get_method(name).defaults)


def is_score_function(name: str) -> bool:
    """True for estimators that need ``f``'s values only (REINFORCE, RLOO)."""
    return name not in _PEER_DEFAULTS and get_method(name).kind == "score"


def _peer_sample(logits: torch.Tensor, n_steps: int = 5, t1: float = 0.5) -> torch.Tensor:
    import redge as peer

    return peer.redge(logits, n_steps, t1)


def estimate(f: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, name: str,
             n_samples: int = 1, **knobs: Any) -> torch.Tensor:
    """Surrogate loss for estimator ``name`` (ours or peer); see :func:`samplegrad.surrogate`.

    ``f``: one-hot ``(n_samples, *logits.shape)`` -> ``(n_samples,)``.
    """
    if name == PEER_REDGE:
        kw = {**_PEER_DEFAULTS[name], **knobs}
        y = _peer_sample(logits.expand(n_samples, *logits.shape), **kw)
        fx = f(y)
        check_objective_values(fx, n_samples, logits.shape)
        return fx.mean(0).sum()
    return sg.surrogate(f, logits, method=name, n_samples=n_samples, **knobs)


def sampler(name: str, **knobs: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """For pathwise estimators: ``logits -> one-hot sample carrying the estimator's gradient``
    (for use inside models, e.g. a VAE encoder). Score-function names raise ValueError."""
    if name == PEER_REDGE:
        kw = {**_PEER_DEFAULTS[name], **knobs}
        return lambda logits: _peer_sample(logits, **kw)
    m = get_method(name)
    if m.kind != "pathwise":
        raise ValueError(f"{name!r} is not a pathwise estimator; use estimate(f, ...)")
    kw = {**m.defaults, **knobs, **m.fixed}
    return lambda logits: m.fn(logits, **kw)
