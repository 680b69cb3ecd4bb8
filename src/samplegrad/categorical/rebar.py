"""REBAR (Tucker et al. 2017) and RELAX (Grathwohl et al. 2018): score-function estimators
whose control variate is a function of the continuous relaxation, corrected by its own
reparameterization gradient so that the estimate stays unbiased.

With ``z = log p + g`` (``g`` standard Gumbel), ``b = onehot(argmax z)`` the hard sample,
``z~`` the Gumbel noise redrawn *given* ``b`` (reparameterized in the logits) and a control
variate ``c``, each sample's estimate is

    g_hat = (f(b) - c(z~)) grad log p(b) + grad c(z) - grad c(z~).

REBAR uses ``c(z) = eta * f(softmax(z / tau))``, so **f is also evaluated at relaxed (soft)
samples**: it must accept points of the simplex, not only one-hots, and be differentiable
there (polynomials, losses on probabilities and most neural decoders are). RELAX adds a
small learned network ``r_phi(softmax(z / tau))`` to ``c`` and trains ``phi`` (and ``eta``)
to minimise ``E ||g_hat||^2``, i.e. the estimator's variance, with its own optimizer: keep a
:class:`RelaxState` from :func:`relax_init` and pass it to every call.

Both return a surrogate loss like :func:`samplegrad.reinforce`: its value is the Monte Carlo
estimate ``mean f(b)``, its ``backward()`` leaves ``g_hat`` in ``logits.grad`` and the
pathwise gradient of ``f`` at the hard samples in ``f``'s own parameters. They compute
``g_hat`` with ``torch.autograd.grad`` inside, so unlike the pathwise estimators they do not
run under ``torch.func`` transforms or ``torch.compile(fullgraph=True)``. Math:
docs/methods.md#rebar and docs/methods.md#relax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from samplegrad._config import check_int, check_real
from samplegrad._optim import OptimizerFactory, check_lr, check_optimizer_name, make_optimizer
from samplegrad.categorical._checks import (
    Objective,
    check_callable,
    check_finite_values,
    check_flag,
    check_generator,
    check_logits,
    check_n_samples,
    check_objective_values,
    check_tau,
    compute_dtype,
)
from samplegrad.categorical._sampling import uniform
from samplegrad.categorical.gumbel_rao import conditional_gumbel

# ----------------------------------------------------------------------------- the control net

class _PerElementMLP(torch.nn.Module):
    """``r_phi``: the relaxed sample of each leading batch element (flattened, ``dim``
    inputs) -> one value; the last layer starts at zero, so an untrained RELAX is REBAR."""

    def __init__(self, dim: int, hidden: int, n_lead: int, device, dtype,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_lead, self.dim = n_lead, dim
        sizes = [(dim, hidden), (hidden, hidden), (hidden, 1)]
        layers = [torch.nn.utils.skip_init(torch.nn.Linear, i, o, device=device, dtype=dtype)
                  for i, o in sizes]
        with torch.no_grad():  # torch's default init, from `generator` when given
            for layer, (i, _) in zip(layers[:-1], sizes):
                bound = 1.0 / math.sqrt(i)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            layers[-1].weight.zero_()
            layers[-1].bias.zero_()
        self.net = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1], torch.nn.Tanh(),
                                       layers[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (S, *lead, *rest) -> (S, *lead)
        lead = x.shape[: 1 + self.n_lead]
        return self.net(x.reshape(*lead, -1)).squeeze(-1)


@dataclass
class RelaxState:
    """RELAX's learned control variate and its optimizer (see :func:`relax_init`).

    ``net``: ``r_phi`` (``None`` until the first call builds the default MLP from the shapes
    it sees, on the logits' device); ``eta``: the learned scale of REBAR's term (a scalar
    leaf, or ``None`` without that term); ``optimizer``: over both (built with ``net``);
    ``step``: training steps taken; ``variance``: the last variance estimate (a 0-d tensor,
    NaN with one sample per call). The state is updated in place by :func:`relax` and
    :func:`relax_step` (the optimizer's own state is in place anyway).
    """

    net: torch.nn.Module | None
    eta: torch.Tensor | None
    optimizer: torch.optim.Optimizer | None
    hidden: int = 32
    optimizer_name: str = "Adam"
    lr: float = 3e-3
    optimizer_factory: OptimizerFactory | None = None
    step: int = 0
    variance: torch.Tensor | None = None
    _eta0: float = field(default=1.0, repr=False)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume training the control variate: the net's and
        the optimizer's state dicts, ``eta``, ``step`` and the default net's shapes (so a
        fresh state can rebuild it before its first call). ``{"built": False}`` before the
        first call, when there is nothing trained yet."""
        if self.optimizer is None:
            return {"built": False}
        net = self.net
        shape = ((net.dim, net.n_lead) if isinstance(net, _PerElementMLP) else None)
        return {"built": True, "default_net": shape, "net": net.state_dict(),
                "eta": None if self.eta is None else self.eta.detach().clone(),
                "optimizer": self.optimizer.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output in place (on the device and dtype of the saved
        tensors; a net you passed to :func:`relax_init` keeps its own). Loading an unbuilt
        state leaves this one untouched."""
        if not isinstance(state, dict) or "built" not in state:
            raise ValueError("control: not a RelaxState.state_dict()")
        if not state["built"]:
            return
        like = next(iter(state["net"].values()))
        if self.net is None:
            if state["default_net"] is None:
                raise ValueError("control: the saved state used your own net; pass that net "
                                 "to relax_init(net=...) before loading")
            dim, n_lead = state["default_net"]
            self.net = _PerElementMLP(dim, self.hidden, n_lead, like.device, like.dtype)
        self.net.load_state_dict(state["net"])
        self._eta0 = math.nan if state["eta"] is None else float(state["eta"])
        _build_optimizer(self, like.device, like.dtype)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


@dataclass(frozen=True)
class RelaxInfo:
    """What one :func:`relax_step` returns besides the state (tensors, no host sync).

    ``loss``: the surrogate loss (``backward()`` puts the estimate in ``logits.grad``);
    ``grad``: the estimate itself, shaped like the logits; ``second_moment``: ``||grad||^2``,
    the quantity the control variate is trained to minimise (its expectation is
    ``||E grad||^2 + variance / n_samples``); ``variance``: the trace of the covariance of
    one single-sample estimate, estimated from the ``n_samples`` (NaN when
    ``n_samples == 1``); ``eta``: the current scale of REBAR's term (NaN without it).
    """

    loss: torch.Tensor
    grad: torch.Tensor
    second_moment: torch.Tensor
    variance: torch.Tensor
    eta: torch.Tensor


def relax_init(net: torch.nn.Module | None = None, *, hidden: int = 32, eta: float = 1.0,
               rebar_term: bool = True, optimizer: str = "Adam", lr: float = 3e-3,
               optimizer_factory: OptimizerFactory | None = None) -> RelaxState:
    """A fresh :class:`RelaxState` for :func:`relax` / :func:`relax_step`.

    ``net``: your own ``r_phi``, a module taking the relaxed sample ``(S, *logits.shape)``
    and returning what ``f`` returns (``(S,)`` or per element); default (``None``): an MLP
    (``hidden`` units, two tanh layers) applied to each leading batch element that ``f``
    scores separately, built at the first call. ``eta``: the initial scale of REBAR's term
    ``eta * f(softmax(z / tau))``, learned with the net (``rebar_term=False``: no such term,
    ``f`` is then only evaluated at hard samples). ``optimizer`` / ``lr``: a
    ``torch.optim`` class name and its step size, or ``optimizer_factory(params)``
    (:mod:`samplegrad._optim` convention). Call ``relax_init`` once per problem and reuse
    the state across steps: that is how the control variate keeps training.
    """
    if net is not None and not isinstance(net, torch.nn.Module):
        raise TypeError(f"net: must be a torch.nn.Module or None, got {type(net).__name__}")
    hidden = check_int(hidden, "hidden", minimum=1)
    eta = check_real(eta, "eta")
    rebar_term = check_flag(rebar_term, "rebar_term")
    if optimizer_factory is None:
        check_optimizer_name(optimizer)
        lr = check_lr(lr)
    elif not callable(optimizer_factory):
        raise TypeError(f"optimizer_factory: must be callable, got "
                        f"{type(optimizer_factory).__name__}")
    state = RelaxState(net=net, eta=None, optimizer=None, hidden=hidden,
                       optimizer_name=optimizer, lr=float(lr),
                       optimizer_factory=optimizer_factory, _eta0=eta if rebar_term else math.nan)
    return state


def _build(state: RelaxState, relaxed: torch.Tensor, n_lead: int,
           generator: torch.Generator | None) -> None:
    """Create the default net, ``eta`` and the optimizer at the first call."""
    dev, dt = relaxed.device, relaxed.dtype
    if state.net is None:
        dim = math.prod(relaxed.shape[1 + n_lead:])
        state.net = _PerElementMLP(dim, state.hidden, n_lead, dev, dt, generator)
    _build_optimizer(state, dev, dt)


def _build_optimizer(state: RelaxState, dev: torch.device, dt: torch.dtype) -> None:
    """``eta`` (a leaf, from ``state._eta0``) and the optimizer over it and the net."""
    if not math.isnan(state._eta0):
        state.eta = torch.tensor(state._eta0, device=dev, dtype=dt, requires_grad=True)
    params = [p for p in state.net.parameters() if p.requires_grad]
    if state.eta is not None:
        params.append(state.eta)
    state.optimizer = make_optimizer(params, state.optimizer_name, state.lr,
                                     state.optimizer_factory)


# ----------------------------------------------------------------------------- the estimator

def _relaxations(logits: torch.Tensor, n: int, tau: float, generator):
    """Per-sample logit copies ``theta`` (a local leaf ``(n, *shape)``), the hard samples
    ``b``, and the relaxed samples ``softmax(z / tau)``, ``softmax(z~ / tau)`` (differentiable
    in ``theta``), all in the compute dtype."""
    dt = compute_dtype(logits)
    theta = logits.detach().to(dt).expand(n, *logits.shape).clone().requires_grad_()
    lp = torch.log_softmax(theta, -1)
    masked = torch.isinf(lp)  # masked classes (and ones whose probability underflows)
    tiny = torch.finfo(dt).tiny
    u = uniform(theta.shape, theta, generator)
    v = uniform(theta.shape, theta, generator)
    gumbel = -(-(u.clamp(min=tiny).log())).clamp(min=tiny).log()
    z = lp.detach() + gumbel
    b = (z == z.amax(-1, keepdim=True)).to(dt)
    b = b * (b.cumsum(-1) == 1)  # a tie (probability 0) goes to the first maximal class
    z = lp + gumbel  # the same draw, differentiable in theta
    lp_safe = torch.where(masked, torch.zeros((), dtype=dt, device=lp.device), lp)
    zt = torch.where(masked, torch.full((), -math.inf, dtype=dt, device=lp.device),
                     conditional_gumbel(lp_safe, b, v, dim=-1))
    if tau >= 1.0:
        soft = torch.softmax(z / tau, -1), torch.softmax(zt / tau, -1)
    else:  # subtract the max before dividing: no overflow for small tau
        soft = (torch.softmax((z - z.detach().amax(-1, keepdim=True)) / tau, -1),
                torch.softmax((zt - zt.detach().amax(-1, keepdim=True)) / tau, -1))
    return theta, b, soft


def _estimate(f: Objective, logits: torch.Tensor, n: int, tau: float, eta: float,
              generator, state: RelaxState | None, train: bool):
    """(surrogate loss, per-sample estimates ``(n, *shape)``, estimate, second moment)."""
    with torch.enable_grad():
        theta, b, (sz, szt) = _relaxations(logits, n, tau, generator)
        fb = f(b.to(logits.dtype))
        j = check_objective_values(fb, n, logits.shape)
        dt = theta.dtype
        if state is not None and state.optimizer is None:
            _build(state, sz.detach(), j, generator)
        scale = state.eta if state is not None else eta
        c_z = c_zt = torch.zeros((), dtype=dt, device=theta.device)
        if scale is not None and not (isinstance(scale, float) and scale == 0.0):
            fs = [f(x.to(logits.dtype)) for x in (sz, szt)]  # n samples per call, like fb
            for v in fs:
                if not isinstance(v, torch.Tensor) or v.shape != fb.shape:
                    raise ValueError(f"f: must return the same shape at relaxed samples as at "
                                     f"hard ones, {tuple(fb.shape)}; got "
                                     f"{tuple(getattr(v, 'shape', ()))}")
                check_finite_values(v, "f")
            c_z, c_zt = scale * fs[0].to(dt), scale * fs[1].to(dt)
        if state is not None:
            net = state.net
            if isinstance(net, _PerElementMLP) and (
                    net.n_lead != j or net.dim != math.prod(sz.shape[1 + j:])):
                raise ValueError(f"control: this RelaxState's net was built for {net.n_lead} "
                                 f"scored batch dims and {net.dim} inputs per element; this "
                                 f"call has {j} and {math.prod(sz.shape[1 + j:])} (use one "
                                 "state per problem shape)")
            net_dt = next(iter(state.net.parameters()), sz).dtype
            r = state.net(torch.cat([sz, szt]).to(net_dt))
            if not isinstance(r, torch.Tensor) or r.shape != (2 * n, *fb.shape[1:]):
                raise ValueError(f"control: its net must return {(2 * n, *fb.shape[1:])} "
                                 f"(like f), got {tuple(getattr(r, 'shape', ()))}")
            r = r.to(dt)
            c_z, c_zt = c_z + r[:n], c_zt + r[n:]
        diff = (c_z - c_zt).sum()
        path = None
        if diff.requires_grad:
            (path,) = torch.autograd.grad(diff, theta, create_graph=train, allow_unused=True)
        if path is None:  # a control variate that does not depend on the sample
            path = torch.zeros_like(theta)
        coef = fb.detach().to(dt) - c_zt
        coef = coef.reshape(*coef.shape, *([1] * (theta.dim() - coef.dim())))
        score = b - torch.softmax(theta.detach(), -1)  # grad of log p(b), per variable
        per_sample = coef * score + path
        est = per_sample.mean(0)
        second = (est * est).sum()
    finite = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
    lin = (est.detach().to(logits.dtype) * finite).sum()
    loss = fb.mean(0).sum() + lin - lin.detach()
    return loss, per_sample, est, second


def _check_common(f, logits, n_samples, tau, generator) -> tuple[int, float]:
    check_callable(f)
    check_logits(logits)
    n_samples = check_n_samples(n_samples)
    tau = check_tau(tau)
    check_generator(generator, logits.device)
    return n_samples, tau


def rebar(f: Objective, logits: torch.Tensor, n_samples: int = 1, *, tau: float = 0.5,
          eta: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """REBAR (Tucker et al. 2017) surrogate loss: unbiased, with the control variate
    ``eta * f(softmax(z / tau))`` at the relaxed sample and at the conditional relaxed
    sample (see the module docstring).

    ``f``: as for :func:`samplegrad.reinforce` (one-hots ``(n_samples, *logits.shape)`` ->
    ``(n_samples,)`` or per-element values), and it **must also accept relaxed samples**
    (points of the simplex) and be differentiable in them; it is called three times, once on the
    ``n_samples`` hard samples and twice on ``n_samples`` relaxed ones. ``tau > 0``: the
    relaxation's temperature; ``eta``: the control variate's scale (``0``: REINFORCE
    without baseline). Cost: three evaluations of ``f`` and one backward through it per
    sample. ``generator``: optional ``torch.Generator`` on ``logits``' device.
    """
    n_samples, tau = _check_common(f, logits, n_samples, tau, generator)
    eta = check_real(eta, "eta")
    return _estimate(f, logits, n_samples, tau, eta, generator, None, False)[0]


def _check_state(control) -> RelaxState:
    if not isinstance(control, RelaxState):
        raise TypeError(f"control: must be a RelaxState from samplegrad.relax_init() or None, "
                        f"got {type(control).__name__}")
    return control


def relax_step(state: RelaxState, f: Objective, logits: torch.Tensor, n_samples: int = 1, *,
               tau: float = 0.5, train: bool = True,
               generator: torch.Generator | None = None) -> tuple[RelaxState, RelaxInfo]:
    """One RELAX (Grathwohl et al. 2018) estimate with ``state``'s control variate
    ``eta * f(softmax(z / tau)) + r_phi(softmax(z / tau))``, then (``train=True``) one
    optimizer step of ``phi`` and ``eta`` on the gradient of ``||g_hat||^2`` (the
    estimator's variance, up to a term that does not depend on them).

    Returns ``(state, info)``; ``info.loss`` is the surrogate loss (call ``backward()`` on it
    for ``logits.grad``), see :class:`RelaxInfo`. ``f`` as in :func:`rebar` (evaluated at
    relaxed samples unless the state has no REBAR term). Training costs a second-order
    backward through ``f`` and the net. ``state`` is updated in place and returned.
    """
    state = _check_state(state)
    n_samples, tau = _check_common(f, logits, n_samples, tau, generator)
    train = check_flag(train, "train")
    loss, per_sample, est, second = _estimate(f, logits, n_samples, tau, math.nan, generator,
                                              state, train)
    if train:
        params = [p for g in state.optimizer.param_groups for p in g["params"]]
        with torch.enable_grad():
            grads = torch.autograd.grad(second, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
    dev = est.device
    if n_samples > 1:
        d = per_sample.detach() - est.detach()
        variance = (d * d).sum() / (n_samples - 1)
    else:
        variance = torch.full((), math.nan, dtype=est.dtype, device=dev)
    state.variance = variance
    eta = (state.eta.detach().clone() if state.eta is not None
           else torch.full((), math.nan, dtype=est.dtype, device=dev))
    return state, RelaxInfo(loss, est.detach().to(logits.dtype), second.detach(), variance, eta)


def relax(f: Objective, logits: torch.Tensor, n_samples: int = 1, *, tau: float = 0.5,
          eta: float = 1.0, control: RelaxState | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """RELAX surrogate loss (the registry's ``"relax"``): :func:`relax_step` with
    ``control`` (a :class:`RelaxState`, trained in place by this call), returning only the
    loss.

    ``control=None`` (the default) means a fresh, untrained control variate: its net starts
    at zero, so this is exactly :func:`rebar` with scale ``eta`` (``eta`` is otherwise the
    state's learned value). To get RELAX's variance reduction keep one state per problem::

        state = sg.relax_init()
        for step in range(n):
            loss = sg.surrogate(f, logits, "relax", control=state)

    Unbiased for any state. ``f``, ``tau``, ``generator`` as in :func:`rebar`.
    """
    if control is None:
        return rebar(f, logits, n_samples, tau=tau, eta=eta, generator=generator)
    return relax_step(_check_state(control), f, logits, n_samples, tau=tau,
                      generator=generator)[1].loss


__all__ = ["RelaxInfo", "RelaxState", "rebar", "relax", "relax_init", "relax_step"]
