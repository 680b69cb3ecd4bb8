"""Reward guidance of a masked diffusion sampler through categorical gradient estimators.

At each sampling step the masked positions get variational logits ``theta``, started at
the model's logits ``p``, and a few Adam steps on the per-sequence objective

    E_{y ~ q_theta}[loss(y)] + lam * sum_{masked i} KL(q_i || p_i)

(``loss`` to minimize: a constraint penalty, or minus a reward). ``y`` are categorical
draws on the masked positions, the unmasked ones held at their tokens, and the gradient of
the expectation comes from any estimator in the registry (``samplegrad.methods()`` minus
``exact``, including those added with :func:`samplegrad.register`). The unmasking step then
draws from ``q_theta``.

The KL term is handled in one of two ways (``kl_mode``):
- ``"prox"`` (default): Adam on the expectation, then the exact proximal step of
  ``lr * lam * KL(. || p)`` in the KL geometry, ``argmin_q lr*lam*KL(q||p) + KL(q||q')``,
  i.e. ``theta <- (theta' + lr*lam*p) / (1 + lr*lam)``. As ``lam -> inf`` q is exactly p and
  the guided sampler is exactly the unguided one.
- ``"gradient"``: the analytic KL's gradient is added to the estimator's and Adam steps on
  the sum (Adam's normalized steps keep q within about ``lr`` of p even for huge ``lam``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from samplegrad._config import check_bool, check_choice, check_int, check_real
from samplegrad._optim import check_lr
from samplegrad._validation import validation_enabled
from samplegrad.categorical.registry import get_method, methods, surrogate
from samplegrad.diffusion._checks import check_finite, shape_str
from samplegrad.discrete.sampler import Guide, kl_categorical

# objective(one-hot or soft sequences (S, B, L, V)) -> per-sequence loss (S, B), to minimize
Objective = Callable[[Tensor], Tensor]
KL_MODES = ("prox", "gradient")


@dataclass
class GuidanceConfig:
    """Settings of the per-step variational optimization (printed with every result)."""

    method: str = "redge"
    n_samples: int = 4
    n_opt_steps: int = 5
    lr: float = 0.3
    kl_weight: float = 1.0
    kl_mode: str = "prox"
    warm_start: bool = True  # start each sampling step at p + (previous step's q - p)
    knobs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.method, "method", [m for m in methods() if m != "exact"])
        check_int(self.n_samples, "n_samples", 1)
        check_int(self.n_opt_steps, "n_opt_steps", 0)
        check_lr(self.lr)
        check_real(self.kl_weight, "kl_weight", ge=0, allow_inf=True)
        check_choice(self.kl_mode, "kl_mode", KL_MODES)
        check_bool(self.warm_start, "warm_start")
        if not isinstance(self.knobs, dict):
            raise ValueError(f"knobs: must be a dict of estimator settings, got "
                             f"{type(self.knobs).__name__}")


def _checked(objective: Objective, n: int, b: int) -> Objective:
    """``objective`` with its output checked where it enters: shape ``(n, b)`` (always),
    finite (when value checks are on)."""
    def f(y: Tensor) -> Tensor:
        out = objective(y)
        if not isinstance(out, Tensor) or out.shape != (n, b):
            raise ValueError(f"objective: must map sequences (S, B, L, V) = {tuple(y.shape)} "
                             f"to one loss per sample and sequence (S, B) = {(n, b)}, got "
                             f"{shape_str(out)}")
        check_finite(out, "objective", "returned non-finite values (NaN or inf)")
        return out
    return f


def _expected_objective(theta: Tensor, fixed: Tensor, masked: Tensor, objective: Objective,
                        cfg: GuidanceConfig) -> Tensor:
    """Surrogate of ``sum_b E_q[objective_b]``; its backward fills ``theta.grad``."""
    m = masked.unsqueeze(-1)
    if get_method(cfg.method).kind != "score":
        # pathwise: batch items are independent, so the gradient of the sum is per item
        obj = _checked(objective, cfg.n_samples, theta.shape[0])

        def f(y: Tensor) -> Tensor:
            return obj(torch.where(m, y, fixed)).sum(-1)

        return surrogate(f, theta, cfg.method, cfg.n_samples, **cfg.knobs)
    # score function: one call per sequence, so each gets its own baseline and variance
    obj1 = _checked(objective, cfg.n_samples, 1)
    total = theta.new_zeros(())
    for b in range(theta.shape[0]):
        def f_b(y: Tensor, b: int = b) -> Tensor:
            return obj1(torch.where(m[b], y, fixed[b]).unsqueeze(1)).squeeze(1)

        total = total + surrogate(f_b, theta[b], cfg.method, cfg.n_samples, **cfg.knobs)
    return total


def guided_logits(p_logits: Tensor, x: Tensor, objective: Objective, cfg: GuidanceConfig,
                  offset: Tensor | None = None, *, mask_id: int | None = None) -> Tensor:
    """Variational logits ``(B, L, V)`` for the masked positions of ``x`` ``(B, L)``; rows of
    unmasked positions are returned as ``p_logits``. The optimization starts at ``p_logits +
    offset`` (``offset`` ``(B, L, V)``, default 0).

    ``mask_id``: the id marking masked positions in ``x`` (default ``V``, our convention); a
    mask id inside the vocabulary is never proposed (its logit is -inf). Classes at -inf in
    ``p_logits`` stay at -inf (they are optimized at a finite floor far below the others).
    """
    if not isinstance(cfg, GuidanceConfig):
        raise TypeError(f"cfg: must be a GuidanceConfig, got {type(cfg).__name__}")
    if not callable(objective):
        raise TypeError(f"objective: must be callable ((S, B, L, V) -> (S, B)), got "
                        f"{type(objective).__name__}")
    if not isinstance(p_logits, Tensor) or p_logits.dim() != 3 or p_logits.shape[-1] < 1 \
            or not p_logits.is_floating_point():
        raise ValueError(f"p_logits: must be float logits shaped (B, L, V), got "
                         f"{shape_str(p_logits)}")
    b, length, v = p_logits.shape
    if not isinstance(x, Tensor) or x.shape != (b, length):
        raise ValueError(f"x must be shaped {(b, length)}; got {shape_str(x)}")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"x: must hold integer token ids, got {x.dtype}")
    mask_id = v if mask_id is None else check_int(mask_id, "mask_id", 0)
    p = p_logits.detach().float()
    if mask_id < v:
        p = p.clone()
        p[..., mask_id] = -math.inf
    masked = x == mask_id
    if validation_enabled():
        if bool(torch.isnan(p).any()) or bool((p == math.inf).any()):
            raise ValueError("p_logits: contains NaN or +inf")
        bad = ~masked & ((x < 0) | (x >= v))
        if bool(bad.any()):
            raise ValueError(f"x: has token ids outside 0..{v - 1} that are not the mask id "
                             f"{mask_id}")
    if offset is not None and (not isinstance(offset, Tensor) or offset.shape != p.shape):
        raise ValueError(f"offset must be shaped {tuple(p.shape)}; got {shape_str(offset)}")
    if cfg.n_opt_steps == 0 or not bool(masked.any()) or math.isinf(cfg.kl_weight):
        return p  # lam = inf: the minimizer is q = p
    neg = torch.isneginf(p)
    if validation_enabled() and bool(neg.all(-1).any()):
        raise ValueError("p_logits: a position has all its logits at -inf")
    # -inf classes are optimized at a finite floor (exp(-1e4) is 0 in float32), restored after
    floor = p.masked_fill(neg, math.inf).amin(-1, keepdim=True) - 1e4
    p_opt = torch.where(neg, floor, p)
    fixed = torch.nn.functional.one_hot(torch.where(masked, 0, x).long(), v).float()
    start = p_opt if offset is None else torch.where(neg, floor, p + offset.detach().float())
    theta = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    eta = cfg.lr * cfg.kl_weight
    for _ in range(cfg.n_opt_steps):
        opt.zero_grad(set_to_none=True)
        loss = _expected_objective(theta, fixed, masked, objective, cfg)
        if cfg.kl_mode == "gradient" and cfg.kl_weight > 0:
            loss = loss + cfg.kl_weight * (kl_categorical(theta, p_opt) * masked).sum()
        loss.backward()
        theta.grad.masked_fill_(~masked.unsqueeze(-1), 0.0)
        opt.step()
        if cfg.kl_mode == "prox":
            with torch.no_grad():
                theta.copy_((theta + eta * p_opt) / (1.0 + eta))
    q = torch.where(masked.unsqueeze(-1), theta.detach(), p)
    return q.masked_fill(neg, -math.inf)


def make_guide(objective: Objective, cfg: GuidanceConfig, *,
               mask_id: int | None = None) -> Guide:
    """A ``guide`` for one :func:`samplegrad.discrete.sample` call running
    :func:`guided_logits` at every step (``mask_id``: as given to ``sample``, default ``V``).
    With ``cfg.warm_start`` it remembers ``q - p`` of the previous step (its state: make a new
    guide per ``sample`` call), so the variational optimization accumulates over the sampling
    steps instead of restarting at ``p``."""
    if not isinstance(cfg, GuidanceConfig):
        raise TypeError(f"cfg: must be a GuidanceConfig, got {type(cfg).__name__}")
    if not callable(objective):
        raise TypeError(f"objective: must be callable ((S, B, L, V) -> (S, B)), got "
                        f"{type(objective).__name__}")
    if mask_id is not None:
        check_int(mask_id, "mask_id", 0)
    state: dict[str, Tensor] = {}

    def guide(p_logits: Tensor, x: Tensor, t: float, s: float) -> Tensor:
        offset = state.get("offset") if cfg.warm_start else None
        if offset is not None and offset.shape != p_logits.shape:
            offset = None  # a different batch: start afresh
        with torch.enable_grad():
            q = guided_logits(p_logits, x, objective, cfg, offset, mask_id=mask_id)
        # -inf - -inf is NaN: classes that are -inf in both get offset 0
        state["offset"] = torch.nan_to_num(q - p_logits.detach().float(), nan=0.0,
                                           posinf=0.0, neginf=0.0)
        return q

    return guide
