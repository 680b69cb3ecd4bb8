"""Atomic, damage-tolerant save / resume of training state: modules, optimizers, generators,
RNG streams, step and everything a loop logs.

A checkpoint is one ``torch.save`` file written to a temporary name, flushed to disk and
renamed over the target, so an interrupt at any moment leaves either the old or the new
file, never half of one. The file it replaces is kept as ``PATH.prev`` (the last two good
checkpoints are always on disk). Loading checks the file first (its zip structure and the
CRC of every record, then the payload); a damaged file (truncated, empty, random bytes,
another format) is reported by path and the previous one is used with a
:class:`CheckpointWarning`; when neither is usable, :class:`CheckpointError` names both files.

Anything with ``state_dict()`` / ``load_state_dict()`` (modules, optimizers, LR schedulers)
and any ``torch.Generator`` goes in ``stateful``; plain Python values (step, loss history,
smoothed losses, EMA baselines, queue contents) go in ``extra``. The global RNG streams
(torch CPU and CUDA, Python ``random``, NumPy's global) are saved and restored too, so a
resumed run draws the same minibatches and noise as an uninterrupted one.

``DeferredInterrupt`` turns Ctrl-C into a flag that a training loop checks between steps:
the loop then saves a checkpoint of a *completed* step and raises ``KeyboardInterrupt``,
so nothing done before the interrupt is lost and no half-applied step is ever saved.

Usage::

    state = load_training_state(path, {"model": model, "opt": opt, "gen": gen})  # None: no file
    step = state["step"] if state else 0
    with DeferredInterrupt() as stop:
        while step < n_steps:
            ...; step += 1
            if step % every == 0 or stop.requested:
                save_training_state(path, {"model": model, "opt": opt, "gen": gen}, step=step,
                                    losses=losses)
            stop.raise_if_requested()
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import threading
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = ["FORMAT_VERSION", "CheckpointError", "CheckpointWarning", "DeferredInterrupt",
           "capture_rng", "load_cache", "load_checkpoint", "load_training_state",
           "previous_path", "read_training_state", "remove_checkpoint", "restore_rng",
           "restore_training_state", "save_checkpoint", "save_training_state"]

FORMAT_VERSION = 1
PREVIOUS_SUFFIX = ".prev"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class CheckpointWarning(UserWarning):
    """A checkpoint file was damaged (or missing) and an older good one was used instead."""


class CheckpointError(RuntimeError):
    """No usable checkpoint: the file (and its ``.prev``) exist but are damaged.

    ``path`` is the checkpoint asked for, ``problems`` a list of ``(file, reason)`` and
    ``detail`` the message without the advice (the command line adds its ``--fresh`` hint,
    or ``hint``, the command that recreates the files, when a caller set it).
    """

    def __init__(self, path: Path, problems: list[tuple[Path, str]], hint: str | None = None):
        self.path = Path(path)
        self.problems = problems
        self.hint = hint
        self.detail = "no usable checkpoint: " + "; ".join(f"{p}: {why}" for p, why in problems)
        super().__init__(f"{self.detail} (delete these files to start over)")


def previous_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced: ``PATH.prev``."""
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def remove_checkpoint(path: str | Path) -> None:
    """Delete ``path``, ``path.prev`` and a leftover ``path.tmp`` (those that exist)."""
    path = Path(path)
    for p in (path, previous_path(path), _tmp_path(path), _tmp_path(previous_path(path))):
        p.unlink(missing_ok=True)


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


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (POSIX; a no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _damage(path: Path) -> str | None:
    """Why ``path`` is not an intact ``torch.save`` archive, or ``None`` when it is one.

    Reads the whole file: the zip directory and the CRC-32 of every record (``torch.load``
    itself checks neither, so a truncated or bit-flipped file could load as garbage).
    """
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "empty file"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile:
        return f"truncated or not a checkpoint ({size} bytes, no readable zip directory)"
    except (OSError, EOFError, ValueError, NotImplementedError) as e:
        return f"damaged ({type(e).__name__}: {e})"
    if bad is not None:
        return f"damaged (checksum mismatch in record {bad!r})"
    return None


def save_checkpoint(path: str | Path, payload: Any, *, keep_previous: bool = True) -> Path:
    """``torch.save(payload)`` atomically: write ``path.tmp``, fsync, rename over ``path``.

    With ``keep_previous`` (default) an intact existing ``path`` is first kept as
    ``path.prev`` (a hard link, or a copy where links are unsupported), so the last two good
    checkpoints are on disk at every moment; a damaged existing ``path`` is not kept (the
    older ``path.prev`` stays).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if keep_previous and path.exists() and _damage(path) is None:
        prev = previous_path(path)
        prev_tmp = _tmp_path(prev)
        prev_tmp.unlink(missing_ok=True)
        try:
            os.link(path, prev_tmp)
        except OSError:
            shutil.copyfile(path, prev_tmp)
        os.replace(prev_tmp, prev)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _read(path: Path, map_location: Any, check: Callable[[Any], None] | None) -> Any:
    """The payload of ``path``; raises ``ValueError(reason)`` when the file is not usable."""
    why = _damage(path)
    if why is not None:
        raise ValueError(why)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # any unpickling failure means the file is not ours / damaged
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    if check is not None:
        try:
            check(payload)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"wrong format ({e})") from None
    return payload


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu",
                    check: Callable[[Any], None] | None = None) -> Any:
    """The payload saved at ``path``, or ``None`` when neither ``path`` nor ``path.prev``
    exists.

    ``path`` is checked first (zip records and checksums, unpickling, then ``check(payload)``,
    which raises ``ValueError``/``KeyError``/``TypeError`` for a payload of the wrong
    format). When it is damaged or missing, ``path.prev`` is used with a
    :class:`CheckpointWarning` naming the damaged file; when both are unusable,
    :class:`CheckpointError` names them. Files are our own (RNG states and Python lists
    inside), hence ``weights_only=False``: load only checkpoints you wrote.
    """
    path = Path(path)
    prev = previous_path(path)
    if not path.exists() and not prev.exists():
        return None
    problems: list[tuple[Path, str]] = []
    for p in (path, prev):
        if not p.exists():
            problems.append((p, "missing"))
            continue
        try:
            payload = _read(p, map_location, check)
        except ValueError as e:
            problems.append((p, str(e)))
            continue
        if problems:
            first, why = problems[0]
            warnings.warn(f"checkpoint {first} is {why if why == 'missing' else 'unusable: ' + why}"
                          f"; using the previous one, {p} (older by one save)",
                          CheckpointWarning, stacklevel=2)
        return payload
    raise CheckpointError(path, problems)


def load_cache(path: str | Path, *, map_location: Any = "cpu", weights_only: bool = False,
               check: Callable[[Any], None] | None = None) -> Any:
    """A cache file written by :func:`save_checkpoint`, or ``None`` when it is missing or
    damaged (then it is deleted, with a :class:`CheckpointWarning`, so it gets recomputed).
    No ``.prev`` fallback: a cache is recomputed, never resumed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        why = _damage(path)
        if why is not None:
            raise ValueError(why)
        try:
            payload = torch.load(path, map_location=map_location, weights_only=weights_only)
        except Exception as e:
            raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
        if check is not None:
            try:
                check(payload)
            except (KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"wrong format ({e})") from None
    except ValueError as e:
        warnings.warn(f"cache {path} is unusable: {e}; recomputing it", CheckpointWarning,
                      stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    return payload


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return {"generator_state": obj.get_state(), "device": str(obj.device)}
    return obj.state_dict()


def _load_into(obj: Any, state: Any, name: str) -> None:
    if isinstance(obj, torch.Generator):
        if str(obj.device) != state["device"]:
            raise ValueError(f"{name}: checkpoint holds a generator on {state['device']}, "
                             f"this one is on {obj.device}")
        obj.set_state(state["generator_state"])
        return
    obj.load_state_dict(state)


def save_training_state(path: str | Path, stateful: dict[str, Stateful | torch.Generator], *,
                        step: int, **extra: Any) -> Path:
    """Save ``stateful`` objects' states (state dicts; generator states), the global RNG
    streams, ``step`` and ``extra``; the replaced checkpoint is kept as ``path.prev``."""
    if isinstance(step, bool) or int(step) != step or step < 0:
        raise ValueError(f"step: must be a non-negative integer, got {step!r}")
    payload = {"version": FORMAT_VERSION, "step": int(step), "rng": capture_rng(),
               "state": {k: _state_of(v) for k, v in stateful.items()}, "extra": extra}
    return save_checkpoint(path, payload)


def _training_check(names: list[str]) -> Callable[[Any], None]:
    def check(payload: Any) -> None:
        if not isinstance(payload, dict):
            raise TypeError(f"a {type(payload).__name__}, not a training-state dict")
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {payload.get('version')!r}, expected {FORMAT_VERSION}")
        for key in ("step", "rng", "state", "extra"):
            if key not in payload:
                raise KeyError(f"no {key!r} entry")
        missing = set(names) - set(payload["state"])
        if missing:
            raise KeyError(f"no state for {sorted(missing)}")
    return check


def read_training_state(path: str | Path, names: list[str] | tuple[str, ...] = (),
                        ) -> dict[str, Any] | None:
    """The checked payload of a :func:`save_training_state` file (``path``, else
    ``path.prev`` with a warning; see :func:`load_checkpoint`), or ``None`` when there is
    none. ``names``: the ``stateful`` entries it must hold. Nothing is restored: inspect
    ``payload["extra"]`` (e.g. the settings it was saved with), then
    :func:`restore_training_state`."""
    return load_checkpoint(path, check=_training_check(list(names)))


def restore_training_state(payload: dict[str, Any],
                           stateful: dict[str, Stateful | torch.Generator],
                           restore_rngs: bool = True) -> dict[str, Any]:
    """Load ``payload`` (from :func:`read_training_state`) into ``stateful`` in place and
    restore the global RNG streams; returns ``{"step": int, **extra}``."""
    _training_check(list(stateful))(payload)
    for k, obj in stateful.items():
        _load_into(obj, payload["state"][k], k)
    if restore_rngs:
        restore_rng(payload["rng"])
    return {"step": payload["step"], **payload["extra"]}


def load_training_state(path: str | Path, stateful: dict[str, Stateful | torch.Generator],
                        restore_rngs: bool = True) -> dict[str, Any] | None:
    """Load a :func:`save_training_state` file into ``stateful`` (in place) and restore the
    RNG streams. Returns ``{"step": int, **extra}``, or ``None`` when there is no file.

    A damaged ``path`` falls back to ``path.prev`` (see :func:`load_checkpoint`)."""
    payload = read_training_state(path, list(stateful))
    if payload is None:
        return None
    return restore_training_state(payload, stateful, restore_rngs)


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
