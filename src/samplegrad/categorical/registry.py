"""Names -> estimators, and the uniform surrogate-loss interface over all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from samplegrad._config import check_bool, check_int
from samplegrad.categorical._checks import (
    check_callable,
    check_generator,
    check_logits,
    check_n_samples,
    check_objective_values,
)
from samplegrad.categorical.antithetic import arm_categorical, arms, disarm_categorical
from samplegrad.categorical.exact import exact
from samplegrad.categorical.gapped import gst
from samplegrad.categorical.gumbel_rao import gumbel_rao
from samplegrad.categorical.rebar import rebar, relax
from samplegrad.categorical.redge import redge
from samplegrad.categorical.relaxed import gumbel_softmax, reinmax, straight_through
from samplegrad.categorical.score_function import reinforce, rloo
from samplegrad.categorical.unordered_set import unordered_set
from samplegrad.categorical.vimco import vimco


@dataclass(frozen=True)
class Method:
    """A registered estimator: how to call it and its default knobs."""

    name: str
    kind: str  # "pathwise" (logits -> sample with gradient), "score" (needs f), "exact",
    # "bound" (estimates the gradient of a multi-sample bound, not of E[f]: VIMCO)
    fn: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)  # not user-settable
    doc: str = ""
    min_samples: int = 1  # the smallest n_samples it accepts
    even_samples: bool = False  # n_samples must be even (antithetic pairs)
    n_classes: int | None = None  # the only class count it accepts (2: binary), or any
    max_samples: int | None = None  # the largest n_samples it accepts, if any

    def __post_init__(self) -> None:
        check_int(self.min_samples, "min_samples", 1)
        check_bool(self.even_samples, "even_samples")
        if self.n_classes is not None:
            check_int(self.n_classes, "n_classes", 2)
        if self.max_samples is not None:
            check_int(self.max_samples, "max_samples", self.min_samples)

    def supports(self, n_samples: int = 1, n_classes: int | None = None) -> bool:
        """Whether ``n_samples`` draws and ``n_classes`` classes are valid for this method
        (``exact`` ignores ``n_samples``); benchmarks use it to skip a method with a note."""
        if self.n_classes is not None and n_classes is not None and n_classes != self.n_classes:
            return False
        if self.kind == "exact":
            return True
        if self.max_samples is not None and n_samples > self.max_samples:
            return False
        return n_samples >= self.min_samples and not (self.even_samples and n_samples % 2)


_REGISTRY: dict[str, Method] = {}


KINDS = ("pathwise", "score", "exact", "bound")


def register(method: Method) -> Method:
    """Add an estimator under ``method.name``; :func:`surrogate`, :func:`sampler`, guidance
    and every benchmark then accept the name. Name clashes are an error.

    A ``"pathwise"`` method's ``fn(logits, **knobs)`` returns a one-hot-valued sample
    ``logits.shape`` carrying its gradient; a ``"score"`` method's
    ``fn(f, logits, n_samples=..., **knobs)`` returns the surrogate loss itself.
    """
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a samplegrad.Method, got {type(method).__name__}")
    if method.kind not in KINDS:
        raise ValueError(f"method.kind must be one of {KINDS}; got {method.kind!r}")
    if not callable(method.fn):
        raise TypeError(f"method.fn must be callable; got {type(method.fn).__name__}")
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


for _m in (
    Method("redge", "pathwise", redge, {"n_steps": 5, "t1": 0.5}, {"variant": "paper"},
           "ReDGE, DDIM pathwise gradient (reference sampler)"),
    Method("redge_cov", "pathwise", redge, {"n_steps": 5, "t1": 0.5}, {"variant": "cov"},
           "ReDGE, moment-matched seed and denoiser"),
    Method("redge_max", "pathwise", redge, {"n_steps": 5, "t1": 0.5}, {"variant": "max"},
           "ReDGE with the ReinMax-style correction"),
    Method("redge_exact", "pathwise", redge, {"n_steps": 5, "t1": 0.5},
           {"variant": "paper", "exact": True}, "ReDGE with exact Cat(pi) hard samples"),
    Method("straight_through", "pathwise", straight_through, {}, {}, "Straight-Through"),
    Method("gumbel_soft", "pathwise", gumbel_softmax, {"tau": 0.5}, {"hard": False},
           "Gumbel-softmax, relaxed sample"),
    Method("gumbel_hard", "pathwise", gumbel_softmax, {"tau": 0.5}, {"hard": True},
           "straight-through Gumbel-softmax"),
    Method("reinmax", "pathwise", reinmax, {"tau": 1.0}, {}, "ReinMax"),
    Method("reinforce", "score", reinforce, {"baseline": None}, {},
           "REINFORCE (optional baseline)"),
    Method("rloo", "score", rloo, {}, {}, "REINFORCE leave-one-out"),
    Method("gumbel_rao", "pathwise", gumbel_rao, {"tau": 0.5, "n_rao": 10}, {},
           "Gumbel-Rao: straight-through Gumbel, Rao-Blackwellized over the noise"),
    Method("gst", "pathwise", gst, {"tau": 0.5, "gap": 1.0}, {}, "Gapped Straight-Through"),
    Method("rebar", "score", rebar, {"tau": 0.5, "eta": 1.0}, {},
           "REBAR (f is also evaluated at relaxed samples)"),
    Method("relax", "score", relax, {"tau": 0.5, "eta": 1.0, "control": None}, {},
           "RELAX, learned control variate (pass control=relax_init() to train it)"),
    Method("arm", "score", arm_categorical, {}, {}, "ARM, antithetic pairs (binary: K = 2)",
           min_samples=2, even_samples=True, n_classes=2),
    Method("disarm", "score", disarm_categorical, {}, {},
           "DisARM, Rao-Blackwellized ARM (binary: K = 2)", min_samples=2, even_samples=True,
           n_classes=2),
    Method("arms", "score", arms, {}, {},
           "ARMS, n mutually antithetic draws, importance-weighted leave-one-out",
           min_samples=2),
    Method("unordered_set", "score", unordered_set, {"batch_dims": 0}, {},
           "unordered-set estimator, k configurations without replacement", min_samples=2,
           max_samples=8),
    Method("vimco", "bound", vimco, {}, {},
           "VIMCO for the multi-sample bound log mean exp f (use samplegrad.vimco)",
           min_samples=2),
    Method("exact", "exact", exact, {}, {}, "exact enumeration (small K**L only)"),
):
    register(_m)


_BUILTIN = frozenset(m.fn for m in _REGISTRY.values())


def methods() -> list[str]:
    """Names accepted by :func:`surrogate` (and by ``samplegrad bench``)."""
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered :class:`Method` called ``name`` (ValueError listing the names if none)."""
    if not isinstance(name, str):
        raise TypeError(f"method: must be a registered name (str), got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r}; choose from {methods()}") from None


def _check_knobs(m: Method, knobs: dict[str, Any]) -> None:
    unknown = sorted(set(knobs) - set(m.defaults))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a knob of method {m.name!r}, which takes "
                         f"{sorted(m.defaults) or 'no knobs'}; got unknown {unknown}")


def sampler(name: str, **knobs: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits -> one-hot sample carrying the estimator's gradient`` for the pathwise method
    ``name`` (for use inside models, e.g. a VAE encoder). Score-function and exact methods
    need the objective itself: use :func:`surrogate` for them (ValueError here).

    ```python
    import torch, samplegrad as sg
    draw = sg.sampler("redge", n_steps=3)
    z = draw(torch.randn(8, 4, 10, requires_grad=True))  # (8, 4, 10) one-hot
    ```

    The returned callable also takes ``generator=`` (a ``torch.Generator`` on the logits'
    device) for its random draws.
    """
    m = get_method(name)
    if m.kind == "bound":
        raise ValueError(f"{name!r} is a bound method, not pathwise; use samplegrad.vimco")
    if m.kind != "pathwise":
        raise ValueError(f"{name!r} is a {m.kind} method, not pathwise; use surrogate(f, ...)")
    _check_knobs(m, knobs)
    kw = {**m.defaults, **knobs, **m.fixed}

    def draw(logits: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            return m.fn(logits, **kw)
        return m.fn(logits, **kw, generator=generator)

    return draw


def surrogate(f: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor,
              method: str = "redge", n_samples: int = 1, *,
              generator: torch.Generator | None = None, **params: Any) -> torch.Tensor:
    """A scalar loss whose value estimates ``E[f(x)]``, ``x ~ Cat(softmax(logits))``, and
    whose ``backward()`` leaves the method's gradient estimate in ``logits.grad``.

    ``f`` takes one-hot configurations ``(n_samples, *logits.shape)`` (every variable at once)
    and returns ``(n_samples,)`` — or per-element values ``(n_samples, *logits.shape[:j])``
    (e.g. per-datapoint losses of a minibatch whose leading logits dim is the batch), which
    gives score-function methods per-element credit; the loss is then the sum over elements.
    ``params`` are the method's knobs (``n_steps``, ``t1``,
    ``tau``, ``baseline``); unknown knobs are an error. For ``method="exact"`` the value and
    gradient are exact and ``n_samples`` is ignored. ``generator``: optional
    ``torch.Generator`` on ``logits``' device for the method's random draws (``exact`` has
    none). ``f`` must return a tensor (``TypeError`` naming ``f`` otherwise); non-finite
    values are a ``ValueError`` naming ``f`` when validation is on.
    """
    check_callable(f)
    m = get_method(method)
    if m.kind == "bound":
        raise ValueError(f"method: {method!r} estimates the gradient of the multi-sample bound "
                         "log mean_k exp f(x_k), not of E[f]; call samplegrad.vimco(log_w, "
                         "logits, n_samples) instead of surrogate")
    # the built-in estimators scan the logits' values themselves (cheaply, class-first)
    check_logits(logits, values=m.fn not in _BUILTIN)
    _check_knobs(m, params)
    kw = {**m.defaults, **params, **m.fixed}
    if m.kind == "exact":
        value, grad = exact(f, logits)
        # masked (-inf) classes have zero gradient; keep 0 * -inf out of the sum
        finite = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
        lin = (grad.detach() * finite).sum()
        return value + lin - lin.detach()
    n_samples = check_n_samples(n_samples)
    if generator is not None:
        check_generator(generator, logits.device)
        kw["generator"] = generator
    if m.kind == "score":
        return m.fn(f, logits, n_samples=n_samples, **kw)
    y = m.fn(logits.expand(n_samples, *logits.shape), **kw)
    fx = f(y)
    check_objective_values(fx, n_samples, logits.shape)
    return fx.mean(0).sum()
