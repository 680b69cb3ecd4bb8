"""The estimators every benchmark compares: the library's registry plus peers.

The peer PyPI ``redge`` 0.1.0 (installed by the ``[bench]`` extra) is registered into the
library's registry with :func:`samplegrad.register` when this module is imported, under
the name ``"peer_redge"``: a pathwise estimator under the same contract as ours, so
:func:`samplegrad.surrogate`, :func:`samplegrad.sampler` and guidance accept it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import samplegrad as sg
from samplegrad.categorical.registry import get_method

PEER_REDGE = "peer_redge"
PEERS = (PEER_REDGE,)


def peer_available() -> bool:
    """Whether the PyPI ``redge`` 0.1.0 package is importable."""
    try:
        import redge  # noqa: F401
    except ImportError:
        return False
    return True


def _peer_sample(logits: torch.Tensor, n_steps: int = 5, t1: float = 0.5) -> torch.Tensor:
    import redge as peer

    return peer.redge(logits, n_steps, t1)


def _register_peers() -> None:
    if PEER_REDGE not in sg.methods() and peer_available():
        sg.register(sg.Method(PEER_REDGE, "pathwise", _peer_sample, {"n_steps": 5, "t1": 0.5},
                              {}, "PyPI redge 0.1.0 (the authors' package), for comparison"))


_register_peers()


def bench_methods(include_peer: bool = True, include_exact: bool = False,
                  include_bounds: bool = False) -> list[str]:
    """Registered estimators (minus ``exact`` unless asked; minus peers unless asked; minus
    the multi-sample-bound methods, VIMCO, unless asked: they do not estimate ``E[f]``, so
    only the VAE benchmark's IWAE objective runs them)."""
    return [m for m in sg.methods()
            if (include_exact or m != "exact") and (include_peer or m not in PEERS)
            and (include_bounds or get_method(m).kind != "bound")]


def unsupported(name: str, n_samples: int = 1, n_classes: int | None = None) -> str | None:
    """Why ``name`` cannot run with ``n_samples`` draws on ``n_classes`` classes (a note for
    the benchmark tables: ARM/DisARM are binary and take pairs, ARMS and the unordered-set
    estimator need two draws or more, the unordered-set estimator at most 8), or ``None``
    when it can."""
    m = get_method(name)
    if m.n_classes is not None and n_classes is not None and n_classes != m.n_classes:
        return f"{name}: binary variables only (K = {m.n_classes}), here K = {n_classes}"
    if not m.supports(n_samples, n_classes):
        even = " and even" if m.even_samples else ""
        top = f" and <= {m.max_samples}" if m.max_samples is not None else ""
        return f"{name}: needs n_samples >= {m.min_samples}{even}{top}, here {n_samples}"
    return None


def default_knobs(name: str) -> dict[str, Any]:
    """The default knobs of ``name`` (a copy), e.g. ``{"n_steps": 5, "t1": 0.5}``."""
    return dict(get_method(name).defaults)


def is_score_function(name: str) -> bool:
    """True for estimators that need ``f``'s values only (REINFORCE, RLOO)."""
    return get_method(name).kind == "score"


def with_state(name: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """``knobs`` plus a fresh per-run state for the estimators that keep one across steps
    (RELAX's learned control variate, ``control=``); a copy of ``knobs`` for the others.
    Call it once per optimization run and pass the result at every step, so the state
    keeps training (one state per problem shape)."""
    out = dict(knobs)
    if get_method(name).fn is sg.relax and out.get("control") is None:
        out["control"] = sg.relax_init()
    return out


def estimate(f: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, name: str,
             n_samples: int = 1, **knobs: Any) -> torch.Tensor:
    """:func:`samplegrad.surrogate` under the name the runners use."""
    return sg.surrogate(f, logits, method=name, n_samples=n_samples, **knobs)


sampler = sg.sampler


# benchmark caps on n_samples for the estimators whose cost grows faster than linearly in it:
# ARMS weighs all n (n - 1) / 2 pairs (O(n^2)), the unordered-set estimator sums n! orders
BENCH_MAX_SAMPLES = {"arms": 16, "unordered_set": 8}


def fit_n_samples(name: str, n_samples: int) -> int:
    """The ``n_samples`` nearest the one asked that ``name`` accepts (RLOO, ARMS, the
    unordered-set estimator: at least 2; ARM/DisARM: the next even number; the unordered-set
    estimator: at most 8; ARMS, in the benchmarks: at most 16, see ``BENCH_MAX_SAMPLES``)."""
    m = get_method(name)
    n = max(n_samples, m.min_samples, 2 if name == "rloo" else 1)
    if m.max_samples is not None:
        n = min(n, m.max_samples)
    if name in BENCH_MAX_SAMPLES:
        n = min(n, BENCH_MAX_SAMPLES[name])
    return n + 1 if m.even_samples and n % 2 else n
