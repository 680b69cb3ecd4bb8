"""Input validation shared by the categorical estimators.

Every error is a ``ValueError``/``TypeError`` whose message starts with the argument's name
("logits: contains NaN"). Checks of types, shapes and Python scalars always run (they cost
nothing and are constant under ``torch.compile``); checks that read tensor *values* run only
when :func:`samplegrad.validation_enabled` (on by default in eager mode, off while
``torch.compile`` traces and inside ``torch.func`` transforms), so with validation off there
is no host sync on the hot path.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from samplegrad._validation import validation_enabled

# f(x) with x (n_samples, *logits.shape) samples -> (n_samples,) or per-element values
Objective = Callable[[torch.Tensor], torch.Tensor]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _real(value, name: str) -> float:
    """A Python real number (bool refused); a 0-d tensor is read with ``float``."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype == torch.bool:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a real number, got {type(value).__name__}")
    return float(value)


def check_logits(logits: torch.Tensor, name: str = "logits", values: bool = True) -> None:
    """Reject a non-tensor, an empty class axis, integers; with validation on (and
    ``values``), NaN, +inf and variables whose every class is -inf (see
    :func:`check_logits_values`)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{name}: needs a non-empty class axis (last dim), got shape "
                         f"{tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: must be floating point, got {logits.dtype}")
    if values:
        check_logits_values(logits, -1, name)


def check_logits_values(x: torch.Tensor, dim: int = -1, name: str = "logits") -> None:
    """When validation is on: NaN, +inf, and variables whose classes (``dim``) are all -inf
    are a ``ValueError``. The estimators call it on their class-first ``(K, N)`` copy
    (``dim=0``), where the reduction over classes is cheap."""
    if x.numel() == 0 or not validation_enabled():
        return
    # one reduction catches NaN anywhere in a variable, +inf, and all -inf variables
    if bool(torch.isfinite(x.detach().amax(dim)).all()):
        return
    d = x.detach()
    if bool(torch.isnan(d).any()):
        raise ValueError(f"{name}: contains NaN")
    if bool((d == math.inf).any()):
        raise ValueError(f"{name}: contains +inf (only -inf is allowed, to mask a class)")
    raise ValueError(f"{name}: has a variable whose classes are all -inf (nothing to sample)")


def check_logits_after(stat: torch.Tensor, x: torch.Tensor, dim: int = 0,
                       name: str = "logits") -> None:
    """When validation is on: the cheap form of :func:`check_logits_values` inside an
    estimator. ``stat`` is something the estimator computed anyway from ``x`` that is finite
    iff ``x`` has no NaN, no +inf and no all -inf variable (the column totals of a softmax,
    a softmax itself); one reduction and one host sync, and only if it is not finite the
    full check, which raises the precise error."""
    if validation_enabled() and not math.isfinite(float(stat.sum())):
        check_logits_values(x, dim, name)
        raise ValueError(f"{name}: gave non-finite intermediate values although they are "
                         "finite (please report this with the input)")


def check_noise(noise: torch.Tensor, logits: torch.Tensor, name: str = "noise") -> None:
    """A floating tensor shaped like ``logits`` on its device; finite when validation is on."""
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"{name}: must be a torch.Tensor or None, got {type(noise).__name__}")
    if noise.shape != logits.shape:
        raise ValueError(f"{name}: must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(noise.shape)}")
    if not noise.is_floating_point():
        raise ValueError(f"{name}: must be floating point, got {noise.dtype}")
    if noise.device != logits.device:
        raise ValueError(f"{name}: is on {noise.device}, logits on {logits.device}")
    if validation_enabled() and noise.numel() and not bool(torch.isfinite(noise).all()):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf); it must be "
                         "standard Gaussian noise")


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """``None`` or a ``torch.Generator`` on ``device``'s type (random draws follow the inputs'
    device, never the CPU by default)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator: is on {generator.device}, the inputs on {device}; "
                         f"create it with torch.Generator(device={str(device)!r})")


def check_t1(t1: float) -> float:
    t1 = _real(t1, "t1")
    if not 0.0 < t1 <= 1.0:
        raise ValueError(f"t1: must lie in (0, 1], got {t1}")
    return t1


def _integer(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be an integer >= {minimum}, got {type(value).__name__}")
    if not (math.isfinite(value) and float(value).is_integer() and value >= minimum):
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value}")
    return int(value)


def check_n_steps(n_steps: int) -> int:
    return _integer(n_steps, "n_steps", 2)


def check_tau(tau: float, minimum: float = 0.0, inclusive: bool = False) -> float:
    tau = _real(tau, "tau")
    ok = tau >= minimum if inclusive else tau > minimum
    if not ok or not math.isfinite(tau):
        rel = ">=" if inclusive else ">"
        raise ValueError(f"tau: must be a finite number {rel} {minimum}, got {tau}")
    return tau


def check_n_samples(n_samples: int, minimum: int = 1) -> int:
    return _integer(n_samples, "n_samples", minimum)


def check_flag(value, name: str) -> bool:
    if not isinstance(value, numbers.Integral) and type(value).__name__ != "bool_":
        raise TypeError(f"{name}: must be a bool, got {type(value).__name__}")
    return bool(value)


def check_baseline(baseline) -> float | torch.Tensor:
    """``None`` (0), a finite real number, or a tensor (finite, checked when validation is on)."""
    if baseline is None:
        return 0.0
    if isinstance(baseline, torch.Tensor):
        if not (baseline.is_floating_point() or baseline.is_complex()):
            baseline = baseline.float()
        if validation_enabled() and not bool(torch.isfinite(baseline).all()):
            raise ValueError("baseline: contains non-finite values (NaN or inf)")
        return baseline.detach()
    b = _real(baseline, "baseline")
    if not math.isfinite(b):
        raise ValueError(f"baseline: must be finite, got {b}")
    return b


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """Half-precision inputs are computed in float32 and cast back."""
    return torch.float32 if logits.dtype in _LOW_PRECISION else logits.dtype


def check_callable(f, name: str = "f") -> None:
    if not callable(f):
        raise TypeError(f"{name}: must be callable, got {type(f).__name__}")


def check_objective_values(fx, n_samples: int, logits_shape: torch.Size,
                           name: str = "f") -> int:
    """Validate ``f``'s output and return how many leading batch dims it keeps.

    ``f`` returns either ``(n_samples,)`` (one value per whole configuration) or
    ``(n_samples, *logits_shape[:j])`` for some ``j < len(logits_shape)``: one value per
    element of the leading ``j`` batch dims (element ``b``'s value may depend only on the
    variables of element ``b``; e.g. per-datapoint losses in a minibatch). Non-finite values
    are a ``ValueError`` naming ``f`` when validation is on.
    """
    if not isinstance(fx, torch.Tensor):
        raise TypeError(f"{name}: must return a torch.Tensor of shape ({n_samples},), got "
                        f"{type(fx).__name__}")
    batch = tuple(logits_shape[:-1])
    allowed = [(n_samples, *batch[:j]) for j in range(len(batch) + 1)]
    if tuple(fx.shape) not in allowed:
        raise ValueError(f"{name}: must return one value per sample, shape ({n_samples},), or "
                         f"per sample and leading batch element, e.g. {allowed[-1]}; got "
                         f"{tuple(fx.shape)}")
    check_finite_values(fx, name)
    return fx.dim() - 1


def check_finite_values(fx: torch.Tensor, name: str = "f") -> None:
    if (validation_enabled() and (fx.is_floating_point() or fx.is_complex())
            and not bool(torch.isfinite(fx.detach()).all())):
        raise ValueError(f"{name}: returned non-finite values (NaN or inf)")
