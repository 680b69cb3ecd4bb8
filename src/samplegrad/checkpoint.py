"""Atomic save / resume of training state: modules, optimizers, RNG streams, step, extras.

A checkpoint is one ``torch.save`` file written to a temporary name and renamed over the
target, so an interrupt at any moment leaves either the old or the new file, never half of
one. Anything with ``state_dict()`` / ``load_state_dict()`` (modules, optimizers, LR
schedulers) goes in ``stateful``; plain Python values (step, loss history, EMA baselines)
go in ``extra``. The RNG streams (torch CPU, Python ``random``, NumPy's global) are saved
and restored too, so a resumed run draws the same minibatches and noise as an uninterrupted
one.

``DeferredInterrupt`` turns Ctrl-C into a flag that a training loop checks between steps:
the loop then saves a checkpoint of a *completed* step and raises ``KeyboardInterrupt``,
so nothing done before the interrupt is lost and no half-applied step is ever saved.

Usage::

    state = load_training_state(path, {"model": model, "opt": opt})   # None if no file
    step = state["step"] if state else 0
    with DeferredInterrupt() as stop:
        while step < n_steps:
            ...; step += 1
            if step % every == 0 or stop.requested:
                save_training_state(path, {"model": model, "opt": opt}, step=step)
            stop.raise_if_requested()
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any, Protocol

import torch

FORMAT_VERSION = 1


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def capture_rng() -> dict[str, Any]:
    """The global RNG states: torch (CPU, and CUDA when initialized), Python ``random`` and
    NumPy (when installed)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    state["numpy"] = np.random.get_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save(payload)`` atomically: write ``path.tmp``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The payload saved at ``path``, or ``None`` when there is no file.

    Files are our own (RNG states and Python lists inside), hence ``weights_only=False``:
    load only checkpoints you wrote.
    """
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def save_training_state(path: str | Path, stateful: dict[str, Stateful], *, step: int,
                        **extra: Any) -> Path:
    """Save ``stateful`` objects' state dicts, the RNG streams, ``step`` and ``extra``."""
    if int(step) != step or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step}")
    payload = {"version": FORMAT_VERSION, "step": int(step), "rng": capture_rng(),
               "state": {k: v.state_dict() for k, v in stateful.items()}, "extra": extra}
    return save_checkpoint(path, payload)


def load_training_state(path: str | Path, stateful: dict[str, Stateful],
                        restore_rngs: bool = True) -> dict[str, Any] | None:
    """Load a :func:`save_training_state` file into ``stateful`` (in place) and restore the
    RNG streams. Returns ``{"step": int, **extra}``, or ``None`` when there is no file."""
    payload = load_checkpoint(path)
    if payload is None:
        return None
    if payload.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload.get('version')!r}, "
                         f"expected {FORMAT_VERSION}")
    missing = set(stateful) - set(payload["state"])
    if missing:
        raise ValueError(f"{path}: checkpoint has no state for {sorted(missing)}")
    for k, obj in stateful.items():
        obj.load_state_dict(payload["state"][k])
    if restore_rngs:
        restore_rng(payload["rng"])
    return {"step": payload["step"], **payload["extra"]}


class DeferredInterrupt:
    """Context manager: SIGINT sets ``.requested`` instead of raising mid-step.

    Call :meth:`raise_if_requested` at a step boundary (after saving). A second Ctrl-C
    while one is pending raises at once. Outside the main thread it is a no-op holder of
    the flag (signals can only be handled there).
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)
            self._installed = False

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt
