"""Argument checks of the spectral subsystem; every error names the argument.

Type, shape, dtype, device and Python-scalar checks always run (they read no tensor data);
the scans of tensor values (NaN/inf in inputs and in what a user's score function returns,
increasing time grids) run only ``if validation_enabled()`` (see :mod:`samplegrad._validation`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from samplegrad._validation import check_finite, check_generator, validation_enabled  # noqa: F401


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """An integer (not a bool; an integral float such as ``3.0`` is refused too) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def _real(value: Any, name: str, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name}: must be {what}, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: must be {what}, got {value!r}")
    return float(value)


def check_time(t: Any, name: str = "t") -> float:
    """A diffusion time: a finite number ``> 0`` (Python number or one-element tensor)."""
    what = "a finite number > 0"
    v = _real(t, name, what)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: must be {what}, got {v!r}")
    return v


def check_nonneg(value: Any, name: str, allow_inf: bool = False) -> float:
    """A number ``>= 0`` (finite unless ``allow_inf``)."""
    what = "a number >= 0" if allow_inf else "a finite number >= 0"
    v = _real(value, name, what)
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name}: must be {what}, got {v!r}")
    return v


def check_time_range(t_min: Any, t_max: Any) -> tuple[float, float]:
    """``0 < t_min < t_max``, both finite."""
    lo = check_time(t_min, "t_min")
    hi = check_time(t_max, "t_max")
    if not lo < hi:
        raise ValueError(f"t_max: must be > t_min = {lo!r}, got {hi!r}")
    return lo, hi


def check_points(x: Any, name: str, dim: int | None = None, *, min_rows: int = 0) -> Tensor:
    """A floating-point ``(N, dim)`` tensor (``N >= min_rows``); NaN/inf refused when value
    checks are on."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: must be a floating-point tensor, got {x.dtype}")
    want = f"(N, {dim})" if dim is not None else "(N, d)"
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{name}: must have shape {want}, got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name}: must have at least {min_rows} rows, got {tuple(x.shape)}")
    check_finite(x, name, "contains NaN or inf")
    return x


def check_score_output(out: Any, like: Tensor, name: str, t: float) -> Tensor:
    """What a user's score function returned at ``(like, t)``: a tensor of ``like``'s shape,
    finite (scanned when value checks are on)."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{name}: must return a tensor, got {type(out).__name__} at t={t:g}")
    if out.shape != like.shape:
        raise ValueError(f"{name}: must return the shape of x, {tuple(like.shape)}, got "
                         f"{tuple(out.shape)} at t={t:g}")
    check_finite(out, name, f"returned non-finite values (NaN or inf) at t={t:g}")
    return out


def check_times_grid(times: Any, name: str = "times", decreasing: bool = True) -> Tensor:
    """A 1-D tensor of >= 2 positive finite times, strictly decreasing (or increasing);
    the values are checked when value checks are on."""
    if not isinstance(times, Tensor):
        raise TypeError(f"{name}: must be a torch.Tensor, got {type(times).__name__}")
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"{name}: must be a 1-D tensor of >= 2 times, got shape "
                         f"{tuple(times.shape)}")
    if validation_enabled():
        order = "decreasing" if decreasing else "increasing"
        steps = times[:-1] - times[1:] if decreasing else times[1:] - times[:-1]
        if not (bool(torch.isfinite(times).all()) and bool((times > 0).all())
                and bool((steps > 0).all())):
            raise ValueError(f"{name}: must be finite positive times, strictly {order}")
    return times
