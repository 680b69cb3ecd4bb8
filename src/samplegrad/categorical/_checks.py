"""Input validation shared by the categorical estimators (ValueError naming the argument)."""

from __future__ import annotations

import math

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """Reject an empty class axis, NaN, +inf, and variables whose every class is -inf."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{name} needs a non-empty class axis (last dim), got shape "
                         f"{tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {logits.dtype}")
    if logits.numel() == 0:
        return
    # one reduction catches NaN anywhere in a row, +inf, and all -inf rows
    if bool(torch.isfinite(logits.detach().amax(-1)).all()):
        return
    d = logits.detach()
    if bool(torch.isnan(d).any()):
        raise ValueError(f"{name} contains NaN")
    if bool((d == math.inf).any()):
        raise ValueError(f"{name} contains +inf (only -inf is allowed, to mask a class)")
    raise ValueError(f"{name} has a variable whose classes are all -inf (nothing to sample)")


def check_t1(t1: float) -> float:
    t1 = float(t1)
    if not 0.0 < t1 <= 1.0:
        raise ValueError(f"t1 must lie in (0, 1], got {t1}")
    return t1


def check_n_steps(n_steps: int) -> int:
    if int(n_steps) != n_steps or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps}")
    return int(n_steps)


def check_tau(tau: float, minimum: float = 0.0, inclusive: bool = False) -> float:
    tau = float(tau)
    ok = tau >= minimum if inclusive else tau > minimum
    if not ok or not math.isfinite(tau):
        rel = ">=" if inclusive else ">"
        raise ValueError(f"tau must be {rel} {minimum}, got {tau}")
    return tau


def check_n_samples(n_samples: int, minimum: int = 1) -> int:
    if int(n_samples) != n_samples or n_samples < minimum:
        raise ValueError(f"n_samples must be an integer >= {minimum}, got {n_samples}")
    return int(n_samples)


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """Half-precision inputs are computed in float32 and cast back."""
    return torch.float32 if logits.dtype in _LOW_PRECISION else logits.dtype


def check_objective_values(fx: torch.Tensor, n_samples: int, logits_shape: torch.Size) -> int:
    """Validate ``f``'s output and return how many leading batch dims it keeps.

    ``f`` returns either ``(n_samples,)`` (one value per whole configuration) or
    ``(n_samples, *logits_shape[:j])`` for some ``j < len(logits_shape)``: one value per
    element of the leading ``j`` batch dims (element ``b``'s value may depend only on the
    variables of element ``b``; e.g. per-datapoint losses in a minibatch).
    """
    batch = tuple(logits_shape[:-1])
    allowed = [(n_samples, *batch[:j]) for j in range(len(batch) + 1)]
    if tuple(fx.shape) not in allowed:
        raise ValueError(f"f must return one value per sample, shape ({n_samples},), or per "
                         f"sample and leading batch element, e.g. {allowed[-1]}; got "
                         f"{tuple(fx.shape)}")
    return fx.dim() - 1
