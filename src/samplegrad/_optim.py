"""The library's one optimizer convention: a ``torch.optim`` class named in a config
(``optimizer="Adam"`` + ``lr``), or a factory ``Callable[[list[Tensor]], Optimizer]`` passed
to an ``init`` function, which then takes precedence over the config's name and ``lr``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from samplegrad._config import check_real

OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]
"""Builds an optimizer over the given leaf tensors, e.g.
``lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)``."""

__all__ = ["OptimizerFactory", "check_lr", "check_optimizer_name", "make_optimizer"]


def check_optimizer_name(name: object, field: str = "optimizer") -> str:
    """``name`` if it names a ``torch.optim.Optimizer`` subclass, else ``ValueError``."""
    cls = getattr(torch.optim, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
            and cls is not torch.optim.Optimizer):
        raise ValueError(f"{field}: {name!r} is not the name of a torch.optim optimizer "
                         "(e.g. 'Adam', 'SGD', 'AdamW')")
    return name  # type: ignore[return-value]


def check_lr(lr: object, field: str = "lr") -> float:
    """``lr`` as a float if it is a finite number > 0, else ``ValueError`` naming ``field``."""
    return check_real(lr, field, gt=0)


def make_optimizer(params: Iterable[Tensor], name: str, lr: float,
                   factory: OptimizerFactory | None = None,
                   **options: Any) -> torch.optim.Optimizer:
    """``factory(list(params))`` when given, else ``torch.optim.<name>(params, lr=lr,
    **options)``."""
    params = list(params)
    if not params:
        raise ValueError("params: there is nothing to optimize (no trainable tensors)")
    if factory is not None:
        opt = factory(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"optimizer: the factory must return a torch.optim.Optimizer, got "
                             f"{type(opt).__name__}")
        for i, group in enumerate(opt.param_groups):  # torch accepts lr=nan silently
            lr = group.get("lr")
            if isinstance(lr, float) and not (math.isfinite(lr) and lr >= 0):
                raise ValueError(f"optimizer: the factory's optimizer has lr={lr!r} in param "
                                 f"group {i}; it must be a finite number >= 0")
        return opt
    cls = getattr(torch.optim, check_optimizer_name(name))
    return cls(params, lr=check_lr(lr), **options)
