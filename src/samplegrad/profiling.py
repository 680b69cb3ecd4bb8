"""Measuring what matters: wall time, autograd graph memory, peak resident memory.

```python
import torch
from samplegrad.profiling import Timer, saved_tensor_bytes

x = torch.randn(64, 10, requires_grad=True)
with Timer() as t, saved_tensor_bytes() as mem:
    y = (x.softmax(-1) ** 2).sum()
print(f"{t.seconds:.4f} s, {mem['bytes']} bytes saved for backward")
```
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

import torch

__all__ = ["Timer", "peak_rss_mb", "saved_tensor_bytes"]


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock, ``perf_counter``)."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@contextlib.contextmanager
def saved_tensor_bytes(exclude: Iterable[torch.Tensor] = ()) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward inside the block (its graph memory).

    ``with saved_tensor_bytes() as m: loss = f(x)`` then ``m["bytes"]``. Tensors saved
    twice (same storage) are counted once; storages of ``exclude`` (e.g. a network's
    weights, which every linear layer saves but which cost no extra memory) are not counted.
    """
    seen: set[int] = {t.untyped_storage().data_ptr() for t in exclude}
    stats = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = t.untyped_storage().data_ptr()
        except RuntimeError:  # e.g. tensors without storage
            key = id(t)
        if key not in seen:
            seen.add(key)
            stats["bytes"] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield stats


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux/macOS; NaN elsewhere)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0
