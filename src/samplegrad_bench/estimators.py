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


def bench_methods(include_peer: bool = True, include_exact: bool = False) -> list[str]:
    """Registered estimators (minus ``exact`` unless asked; minus peers unless asked)."""
    return [m for m in sg.methods()
            if (include_exact or m != "exact") and (include_peer or m not in PEERS)]


def default_knobs(name: str) -> dict[str, Any]:
    """The default knobs of ``name`` (a copy), e.g. ``{"n_steps": 5, "t1": 0.5}``."""
    return dict(get_method(name).defaults)


def is_score_function(name: str) -> bool:
    """True for estimators that need ``f``'s values only (REINFORCE, RLOO)."""
    return get_method(name).kind == "score"


def estimate(f: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, name: str,
             n_samples: int = 1, **knobs: Any) -> torch.Tensor:
    """:func:`samplegrad.surrogate` under the name the runners use."""
    return sg.surrogate(f, logits, method=name, n_samples=n_samples, **knobs)


sampler = sg.sampler
