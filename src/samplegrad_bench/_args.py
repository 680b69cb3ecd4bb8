"""Typed argparse converters shared by the runners (bad values become argparse errors).

Lists are always comma-separated (``--methods redge,rloo``, ``--seeds 0,1,2``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["MissingInputError", "UsageError", "comma_list", "float_list", "int_at_least",
           "int_list", "nonneg_float", "nonneg_int", "positive_float", "positive_int",
           "seed_list"]


class UsageError(ValueError):
    """A bad combination of settings found by a runner; the CLI reports it as a usage error
    (exit status 2, no traceback)."""


class MissingInputError(FileNotFoundError):
    """A file a runner needs (a checkpoint, a sweep) is missing; the message names the
    command that creates it. The CLI prints it on one line (exit status 1)."""


def _number(kind: Callable[[str], Any], text: str, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """Converter: an integer ``>= low``."""
    def convert(text: str) -> int:
        value = _number(int, text, "an integer")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    convert.__name__ = f"int>={low}"
    return convert


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    """Converter: a finite float ``> 0``."""
    value = _number(float, text, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """Converter: a finite float ``>= 0``."""
    value = _number(float, text, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def comma_list(item: Callable[[str], Any] = str,
               choices: Iterable[str] | None = None) -> Callable[[str], list]:
    """Converter: ``"a,b,c"`` -> ``[item("a"), item("b"), item("c")]`` (no empty list);
    with ``choices``, each name must be one of them (the error lists them)."""
    allowed = list(choices) if choices is not None else None

    def convert(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if allowed is not None:
            bad = [p for p in parts if p not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(map(repr, bad))}; choose from {','.join(allowed)}")
        return [item(p) for p in parts]

    convert.__name__ = "comma list"
    return convert


int_list = comma_list(positive_int)
float_list = comma_list(positive_float)
seed_list = comma_list(nonneg_int)  # --seeds 0,1,2: the seeds themselves, everywhere
