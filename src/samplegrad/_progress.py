"""Progress bars for the library's long loops (tqdm on stderr, silent off a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
             leave: bool = False, **kw: Any) -> tqdm:
    """A tqdm bar on stderr that stays quiet when stderr is not a terminal (CI, pipes).

    ``disable=True/False`` forces it off/on.
    """
    disable = kw.pop("disable", None)
    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable,
                dynamic_ncols=True, **kw)
