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

from samplegrad._validation import validation_enabled


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


def check_finite(x: Tensor, what: str, message: str = "non-finite values (NaN or inf)") -> None:
    """``ValueError("{what}: {message}")`` if ``x`` has NaN/inf -- only when value checks are
    on (:func:`samplegrad.validation_enabled`): it reads the data (a host sync)."""
    if validation_enabled() and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: {message}")


def check_generator(generator: Any, device: torch.device, name: str = "generator") -> None:
    """``None`` or a ``torch.Generator`` on ``device``'s type (torch draws on the generator's
    device, so a CPU generator cannot drive CUDA draws)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    if generator.device.type != torch.device(device).type:
        raise ValueError(f"{name}: is on {generator.device.type} but the tensors it draws are "
                         f"on {device}; create it with torch.Generator(device=...)")


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
