"""Small argument checks shared by the diffusion, implicit and discrete subsystems.

Shape/type/device checks always run (they read no tensor data); the value scans
(:func:`check_finite`) run only ``if validation_enabled()``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from samplegrad._validation import check_finite, check_generator, validation_enabled  # noqa: F401


def shape_str(x: Any) -> str:
    """``(2, 3)`` for a tensor, else the type's name (for error messages)."""
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def check_tensor(x: Any, name: str, *, min_dim: int = 0, floating: bool = False) -> Tensor:
    """A tensor with at least ``min_dim`` dims (floating point if asked), else an error
    naming ``name``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name}: must have at least {min_dim} dims, got shape "
                         f"{tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name}: must be floating point, got {x.dtype}")
    return x


def event_shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    """An event shape: an int ``d`` (= ``(d,)``) or a non-empty tuple of ints >= 1."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
            for s in shape):
        raise ValueError(f"{name}: must be an int >= 1 or a non-empty tuple of ints >= 1 (the "
                         f"shape of one sample, e.g. 2 or (1, 28, 28)), got {shape!r}")
    return tuple(int(s) for s in shape)


def is_oom(err: BaseException) -> bool:
    """Out-of-memory errors are passed through untouched, never re-labelled."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(err, oom) or "out of memory" in str(err)


def module_device_dtype(params: Iterable[Tensor]) -> tuple[torch.device, torch.dtype] | None:
    """Device and dtype of the first tensor in ``params`` (``None`` if there is none)."""
    for p in params:
        return p.device, p.dtype
    return None
