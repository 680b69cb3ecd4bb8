"""Field validators for the library's config dataclasses (called from ``__post_init__``).

Every error names the field: ``ValueError("lr: must be a finite number > 0, got 0.0")``.
Booleans are rejected where numbers are expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def check_int(value: Any, field: str, minimum: int | None = None) -> int:
    """An integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{field}: must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{field}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(value: Any, field: str, *, gt: float | None = None, ge: float | None = None,
               lt: float | None = None, le: float | None = None,
               allow_inf: bool = False) -> float:
    """A real number (not a bool, not NaN; infinite only with ``allow_inf``) in the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
            or (math.isinf(value) and not allow_inf):
        what = "a number" if allow_inf else "a finite number"
        raise ValueError(f"{field}: must be {what}, got {value!r}")
    bounds = [(gt, "> ", lambda v, b: v > b), (ge, ">= ", lambda v, b: v >= b),
              (lt, "< ", lambda v, b: v < b), (le, "<= ", lambda v, b: v <= b)]
    for bound, sym, ok in bounds:
        if bound is not None and not ok(value, bound):
            raise ValueError(f"{field}: must be {sym}{bound}, got {value!r}")
    return float(value)


def check_choice(value: Any, field: str, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{field}: must be one of {list(choices)}, got {value!r}")
    return value


def check_bool(value: Any, field: str) -> bool:
    """A ``bool``."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}: must be True or False, got {value!r}")
    return value
