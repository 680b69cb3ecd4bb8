"""The library-wide switch for value checks that read tensor data (host syncs).

Checks of types, shapes, dtypes and Python scalars always run: they cost nothing. Checks that
must look at tensor *values* (NaN/inf in inputs, in what a user callable returns) need a
device-to-host sync and break ``torch.compile(fullgraph=True)`` and ``torch.func``
transforms, so, like ``torch.distributions``' ``validate_args``, they can be switched off:

```python
import torch
import samplegrad as sg

sg.set_validation(False)          # process-wide
with sg.validation(True):         # or for a block
    sg.redge(torch.randn(4, 3))
sg.set_validation(True)
```

They are on by default in eager mode and skipped automatically while ``torch.compile`` traces
(``torch.compiler.is_compiling()``) and inside ``torch.func`` transforms (a value check there
would fail on batched/functional tensors).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["set_validation", "validation", "validation_enabled"]

# check_finite / check_generator below are private helpers shared by the subsystems.

_ENABLED = True


def set_validation(enabled: bool) -> None:
    """Turn value checks (NaN/inf scans of inputs and of user callables' outputs) on or off."""
    global _ENABLED
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: must be a bool, got {type(enabled).__name__}")
    _ENABLED = enabled


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """``with validation(False): ...`` switches value checks for the block, then restores."""
    global _ENABLED
    old = _ENABLED
    set_validation(enabled)
    try:
        yield
    finally:
        _ENABLED = old


try:
    from torch._C._functorch import maybe_current_level as _functorch_level
except ImportError:  # pragma: no cover - older torch
    _functorch_level = None


def _in_functorch_transform() -> bool:
    return _functorch_level is not None and _functorch_level() is not None


def validation_enabled() -> bool:
    """Whether value checks should run now: switched on, not tracing for ``torch.compile``,
    and not inside a ``torch.func`` transform."""
    if not _ENABLED:
        return False
    if torch.compiler.is_compiling():
        return False
    return not _in_functorch_transform()


def check_finite(x: torch.Tensor, name: str, message: str = "contains NaN or inf") -> None:
    """``ValueError("{name}: {message}")`` when ``x`` holds NaN/inf (a value scan: only while
    :func:`validation_enabled`)."""
    if validation_enabled() and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: {message}")


def check_generator(generator: Any, device: torch.device | str, name: str = "generator") -> None:
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
