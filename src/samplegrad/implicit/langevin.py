"""Implicit Diffusion for Langevin samplers: single-loop optimization through sampling.

A parameterized potential ``V(x, theta)`` (particles ``x (N, *shape)`` of any event shape,
parameters ``theta`` a tensor of any shape -> ``(N,)``) defines ``pi_theta ∝ exp(-V(.,
theta))``; the unadjusted Langevin algorithm (ULA) ``x <- x - gamma grad_x V(x, theta) +
sqrt(2 gamma) z`` samples it approximately. We maximize ``E_{pi_theta}[R] - lam KL(pi_ref ||
pi_theta)`` (i.e. minimize ``-E[R] + lam KL``) over ``theta`` with:

* reward gradient ``grad_theta E_pi[R] = -Cov_pi(R(x), grad_theta V(x, theta))``, plug-in
  over the particles (reward values only, never ``grad R``);
* KL gradient ``grad_theta KL(pi_ref || pi_theta) = E_ref[grad_theta V] - E_pi[grad_theta V]``
  (a descent step on it pulls ``theta`` toward the reference).

Both are the gradient of one surrogate ``sum_i w_i V(x_i, theta) + lam mean_j V(x_ref_j,
theta)`` with detached weights, so one backward pass gives the whole estimate.

The potential is either a function ``V(x, theta) -> (N,)`` or an ``nn.Module`` ``V(x) ->
(N,)`` whose parameters are ``theta`` (all with ``requires_grad``, or the subset passed as
``params=`` to :func:`init`): the loop then optimizes them as one flat vector
``state.theta`` (``(p,)``, see :func:`module_potential`) and copies it into the module after
every step, so the module is trained in place.

The single loop (docs/methods.md#single-loop) keeps a population of particles warm across
``theta`` updates: each iteration is ONE Langevin step with the current ``theta``, then ONE
optimizer step on ``theta`` from the new particles. API in the optax/blackjax spirit::

    state = init(potential, theta0, LangevinConfig(), shape=2)
    for _ in range(n):
        state, info = step(state, potential, reward, config)
    # or: state, history = fit(potential, reward, theta0, config, n_steps=5000, shape=2)

``state.theta`` is a leaf tensor that the torch optimizer in ``state.optimizer`` updates in
place; everything else in a step is returned as a new state. Particles, noise and the
generator live on the device and in the dtype of ``x0`` (or of ``theta0``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from samplegrad._config import check_int, check_real
from samplegrad._optim import OptimizerFactory, check_lr, check_optimizer_name, make_optimizer
from samplegrad._validation import validation_enabled
from samplegrad.diffusion._checks import (
    check_finite,
    check_generator,
    event_shape,
    is_oom,
    shape_str,
)

Potential = Callable[[Tensor, Tensor], Tensor]
"""``V(x (N, *shape), theta) -> (N,)``, differentiable in both arguments."""
Reward = Callable[[Tensor], Tensor]
"""``R(x (N, *shape)) -> (N,)``; only values are used by the implicit estimator."""

__all__ = [
    "LangevinConfig", "LangevinState", "Potential", "Reward", "advance_reference",
    "apply_gradient", "covariance_update", "evaluate_reward", "fit", "init", "kl_estimate",
    "kl_gradient", "langevin_sample", "langevin_step", "module_potential",
    "objective_gradient", "potential_and_grad_x", "resolve_potential", "reward_gradient",
    "step",
]


# ----------------------------------------------------------------------------- checks
def check_step_size(step_size: float) -> float:
    if isinstance(step_size, bool) or not (isinstance(step_size, (int, float))
                                           and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size: the Langevin step size gamma must be a finite number > 0, "
                         f"got {step_size!r}")
    return float(step_size)


def _check_x(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"{name}: particles must be a tensor shaped (N, *shape) with N >= 1 "
                         f"and a non-empty event shape, got {shape_str(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: particles must be floating point, got {x.dtype}")


def _check_theta(theta: Tensor, name: str = "theta") -> None:
    if not isinstance(theta, Tensor) or theta.numel() < 1:
        raise ValueError(f"{name}: parameters must be a non-empty tensor, got "
                         f"{shape_str(theta)}")
    if not theta.is_floating_point():
        raise ValueError(f"{name}: parameters must be floating point, got {theta.dtype}")
    check_finite(theta, name, "parameters contain NaN or inf")


def _check_x_theta(x: Tensor, theta: Tensor, name: str = "x") -> None:
    _check_x(x, name)
    _check_theta(theta)
    if x.device != theta.device:
        raise ValueError(f"theta: is on {theta.device} but the particles {name} are on "
                         f"{x.device}; put both on one device")


def _check_values(v: Tensor, n: int, what: str) -> None:
    if not isinstance(v, Tensor) or v.shape != (n,):
        raise ValueError(f"{what}: must return one value per particle, shape ({n},), got "
                         f"{shape_str(v)}")
    check_finite(v, what, "returned non-finite values (NaN or inf)")


def _call_potential(potential: Potential, x: Tensor, theta: Tensor) -> Tensor:
    """``potential(x, theta)``; an error inside it (typically particles and ``theta`` that do
    not fit together) is re-raised naming the shapes involved."""
    try:
        return potential(x, theta)
    except (RuntimeError, IndexError) as e:
        if is_oom(e):
            raise
        raise ValueError(f"potential: failed on particles x of shape {tuple(x.shape)} with "
                         f"theta of shape {tuple(theta.shape)} ({type(e).__name__}: {e}); do "
                         "the particle shape (shape=/x0) and theta fit the potential?") from e


# ----------------------------------------------------------------------------- modules
def _module_params(module: nn.Module, params: Iterable[Tensor] | None
                   ) -> list[tuple[str, Tensor]]:
    """The (name, parameter) pairs of ``module`` to optimize, in module order."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"potential: must be a callable V(x, theta) or an nn.Module V(x), got "
                        f"{type(module).__name__}")
    named = list(module.named_parameters())
    if params is None:
        chosen = [(k, p) for k, p in named if p.requires_grad]
    else:
        try:
            ids = {id(p) for p in ([params] if isinstance(params, Tensor) else params)}
        except TypeError as e:
            raise TypeError(f"params: must be an iterable of the module's parameters, got "
                            f"{type(params).__name__}") from e
        chosen = [(k, p) for k, p in named if id(p) in ids]
        if len(chosen) != len(ids):
            raise ValueError("params: every entry must be a parameter of the potential module")
    if not chosen:
        raise ValueError("potential: the module has no parameters to optimize (none with "
                         "requires_grad=True, or params= is empty)")
    dtypes = {p.dtype for _, p in chosen}
    devices = {p.device for _, p in chosen}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ValueError(f"potential: the parameters to optimize must share one dtype and "
                         f"device, got {sorted(map(str, dtypes))} on {sorted(map(str, devices))}")
    return chosen


def module_potential(module: nn.Module, params: Iterable[Tensor] | None = None
                     ) -> tuple[Potential, Tensor]:
    """An ``nn.Module`` potential ``V(x) -> (N,)`` as a function of a flat parameter vector.

    Returns ``(V, theta0)``: ``V(x, theta)`` calls the module with the chosen parameters
    (``params``, default every parameter with ``requires_grad``) read from ``theta``
    ``(p,)`` (through ``torch.func.functional_call``; the others are used as they are), and
    ``theta0`` their current values, flattened (detached). :func:`init` does this for you.
    """
    chosen = _module_params(module, params)
    names = [k for k, _ in chosen]
    shapes = [p.shape for _, p in chosen]
    sizes = [p.numel() for _, p in chosen]

    def potential(x: Tensor, theta: Tensor) -> Tensor:
        parts = theta.reshape(-1).split(sizes)
        values = {k: v.view(s) for k, v, s in zip(names, parts, shapes)}
        return torch.func.functional_call(module, values, (x,))

    theta0 = torch.cat([p.detach().reshape(-1) for _, p in chosen])
    return potential, theta0


def resolve_potential(potential: Potential | nn.Module, state: LangevinState) -> Potential:
    """The function ``V(x, theta)`` for ``potential``: itself, or for a module the flat-vector
    wrapper :func:`init` built (kept in ``state.extra``)."""
    if isinstance(potential, nn.Module):
        if state.extra.get("module") is not potential:
            raise ValueError("potential: this state was not built by init() for this module")
        return state.extra["potential_fn"]
    if not callable(potential):
        raise TypeError(f"potential: must be a callable V(x, theta) or an nn.Module V(x), got "
                        f"{type(potential).__name__}")
    return potential


def _write_back(state: LangevinState) -> None:
    """Copy ``state.theta`` into the module's parameters (module potentials only)."""
    params = state.extra.get("module_params")
    if not params:
        return
    with torch.no_grad():
        for p, v in zip(params, state.theta.detach().split([p.numel() for p in params])):
            p.copy_(v.view_as(p))


# ----------------------------------------------------------------------------- sampling
def potential_and_grad_x(potential: Potential, x: Tensor, theta: Tensor, *,
                         create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``V(x, theta)`` ``(N,)`` and ``grad_x V`` (shaped like ``x``), validated.

    With ``create_graph`` the gradient stays differentiable in ``x`` and ``theta`` (for
    unrolling); otherwise both outputs are detached.
    """
    _check_x_theta(x, theta)
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        th = theta if create_graph else theta.detach()
        v = _call_potential(potential, xg, th)
        _check_values(v, x.shape[0], "potential")
        if not v.requires_grad:
            raise ValueError("potential: its output does not depend differentiably on x")
        (gx,) = torch.autograd.grad(v.sum(), xg, create_graph=create_graph)
    check_finite(gx, "potential", "its gradient in x is not finite (NaN or inf)")
    return (v, gx) if create_graph else (v.detach(), gx.detach())


def langevin_step(potential: Potential, x: Tensor, theta: Tensor, step_size: float, *,
                  generator: torch.Generator | None = None) -> Tensor:
    """One ULA step ``x - gamma grad_x V(x, theta) + sqrt(2 gamma) z`` on ``x (N, *shape)``."""
    gamma = check_step_size(step_size)
    _, gx = potential_and_grad_x(potential, x, theta)
    check_generator(generator, x.device)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x.detach() - gamma * gx + math.sqrt(2 * gamma) * z


def langevin_sample(potential: Potential, x: Tensor, theta: Tensor, step_size: float,
                    n_steps: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``n_steps`` ULA steps from ``x (N, *shape)`` with ``theta`` fixed (no graph)."""
    check_int(n_steps, "n_steps", 0)
    check_step_size(step_size)
    for _ in range(n_steps):
        x = langevin_step(potential, x, theta, step_size, generator=generator)
    return x


# ----------------------------------------------------------------------------- gradients
def _surrogate_grad(potential: Potential, x: Tensor, theta: Tensor, w: Tensor,
                    x_ref: Tensor | None, ref_weight: float) -> Tensor:
    """``grad_theta [sum_i w_i V(x_i, theta) + ref_weight mean_j V(x_ref_j, theta)]``."""
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        v = _call_potential(potential, x.detach(), th)
        _check_values(v, x.shape[0], "potential")
        s = (w.detach() * v).sum()
        if x_ref is not None and ref_weight != 0:
            vr = _call_potential(potential, x_ref.detach(), th)
            _check_values(vr, x_ref.shape[0], "potential")
            s = s + ref_weight * vr.mean()
        (g,) = torch.autograd.grad(s, th, allow_unused=True)
    g = torch.zeros_like(th) if g is None else g
    check_finite(g, "potential", "its gradient in theta is not finite (NaN or inf)")
    return g


def _centered_weights(rewards: Tensor) -> Tensor:
    n = rewards.shape[0]
    if n < 2:
        raise ValueError("x: the covariance estimator needs at least 2 particles")
    return (rewards - rewards.mean()) / (n - 1)


def _check_ref(x_ref: Tensor, x: Tensor, theta: Tensor) -> None:
    _check_x_theta(x_ref, theta, "x_ref")
    if x_ref.shape[1:] != x.shape[1:]:
        raise ValueError(f"x_ref: particles of shape {tuple(x_ref.shape[1:])} differ from x's "
                         f"{tuple(x.shape[1:])}")


def reward_gradient(potential: Potential, x: Tensor, theta: Tensor, rewards: Tensor) -> Tensor:
    """Plug-in ``grad_theta E_pi[R] = -Cov(R, grad_theta V)`` over particles ``x (N, *shape)``.

    ``rewards (N,)`` are ``R(x)``. Unbiased sample covariance (``1/(N-1)``); returns a tensor
    shaped like ``theta``.
    """
    _check_x_theta(x, theta)
    _check_values(rewards, x.shape[0], "rewards")
    return -_surrogate_grad(potential, x, theta, _centered_weights(rewards), None, 0.0)


def kl_gradient(potential: Potential, x: Tensor, theta: Tensor, x_ref: Tensor) -> Tensor:
    """``grad_theta KL(pi_ref || pi_theta) = E_ref[grad_theta V] - E_pi[grad_theta V]``.

    ``x (N, *shape)`` samples ``pi_theta``, ``x_ref (M, *shape)`` samples ``pi_ref``; returns a
    tensor shaped like ``theta``.
    """
    _check_x_theta(x, theta)
    _check_ref(x_ref, x, theta)
    w = torch.full((x.shape[0],), -1.0 / x.shape[0], dtype=x.dtype, device=x.device)
    return _surrogate_grad(potential, x, theta, w, x_ref, 1.0)


def objective_gradient(potential: Potential, x: Tensor, theta: Tensor, rewards: Tensor,
                       kl_weight: float = 0.0, x_ref: Tensor | None = None) -> Tensor:
    """Gradient of ``-E[R] + kl_weight KL(pi_ref || pi_theta)`` in one backward (shaped like
    ``theta``)."""
    _check_x_theta(x, theta)
    _check_values(rewards, x.shape[0], "rewards")
    check_real(kl_weight, "kl_weight", ge=0)
    w = _centered_weights(rewards)
    if kl_weight > 0:
        if x_ref is None:
            raise ValueError("x_ref: kl_weight > 0 needs reference samples (x_ref or theta_ref)")
        _check_ref(x_ref, x, theta)
        w = w - kl_weight / x.shape[0]
    return _surrogate_grad(potential, x, theta, w, x_ref, kl_weight)


@torch.no_grad()
def kl_estimate(potential: Potential, x_ref: Tensor, theta: Tensor, theta_ref: Tensor) -> float:
    """Importance-sampling estimate of ``KL(pi_ref || pi_theta)`` from ``x_ref ~ pi_ref``:
    ``E_ref[V_theta - V_ref] + log E_ref[exp(V_ref - V_theta)]`` (the normalizer ratio)."""
    _check_x_theta(x_ref, theta, "x_ref")
    _check_theta(theta_ref, "theta_ref")
    d = _call_potential(potential, x_ref, theta) - _call_potential(potential, x_ref, theta_ref)
    _check_values(d, x_ref.shape[0], "potential")
    return float(d.mean() + torch.logsumexp(-d, 0) - math.log(d.shape[0]))


# ----------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class LangevinConfig:
    """Settings of the single-loop optimizer (defaults: the paper's Langevin experiment)."""

    step_size: float = 0.2      # gamma of ULA
    lr: float = 0.1             # theta learning rate
    optimizer: str = "SGD"      # a torch.optim class name (or pass optimizer= to init)
    kl_weight: float = 0.0      # lambda in -E[R] + lambda KL(pi_ref || pi_theta)
    n_particles: int = 1000     # when init gets no x0: x0 ~ N(0, I)
    n_ref: int = 1000           # reference particles when init gets theta_ref
    ref_burn_in: int = 0        # ULA steps run on the reference particles at init
    compile: bool | str = False  # torch.compile the step's math (True: inductor, or a backend)

    def __post_init__(self) -> None:
        check_real(self.step_size, "step_size", gt=0)
        check_lr(self.lr)
        check_optimizer_name(self.optimizer)
        check_real(self.kl_weight, "kl_weight", ge=0)
        check_int(self.n_particles, "n_particles", 1)
        check_int(self.n_ref, "n_ref", 1)
        check_int(self.ref_burn_in, "ref_burn_in", 0)
        if not isinstance(self.compile, bool) and not (
                isinstance(self.compile, str)
                and self.compile in torch.compiler.list_backends(exclude_tags=())):
            raise ValueError(f"compile: must be True/False or a torch.compile backend name "
                             f"(e.g. 'inductor', 'aot_eager'), got {self.compile!r}")


@dataclass
class LangevinState:
    """Everything the loop carries. ``theta`` is the optimizer's leaf tensor (for a module
    potential: its parameters as one flat vector; ``extra`` then holds the module, its
    flat-vector wrapper and the parameters written back after every step)."""

    x: Tensor                              # (N, *shape) particles
    theta: Tensor                          # leaf, requires_grad
    optimizer: torch.optim.Optimizer       # holds the optimizer state (momenta, ...)
    generator: torch.Generator             # the rng
    step: int = 0
    x_ref: Tensor | None = None            # (M, *shape) reference samples / particles
    theta_ref: Tensor | None = None        # shaped like theta, if the reference is pi_theta_ref
    extra: dict[str, Any] = field(default_factory=dict)


def _check_config(config: LangevinConfig) -> LangevinConfig:
    if not isinstance(config, LangevinConfig):
        raise TypeError(f"config: must be a LangevinConfig, got {type(config).__name__}")
    return config


def init(potential: Potential | nn.Module, theta0: Tensor | None = None,
         config: LangevinConfig = LangevinConfig(), *,
         shape: int | tuple[int, ...] | None = None, x0: Tensor | None = None,
         x_ref: Tensor | None = None, theta_ref: Tensor | None = None, seed: int = 0,
         params: Iterable[Tensor] | None = None,
         optimizer: OptimizerFactory | None = None) -> LangevinState:
    """Initial state: particles ``x0`` (or ``N(0, I)`` of shape ``(n_particles, *shape)``).

    ``potential``: a function ``V(x, theta)`` with ``theta0`` the initial parameters (a
    tensor of any shape), or an ``nn.Module`` ``V(x)`` (``theta0`` omitted): ``theta`` is then
    its parameters (``params``, default all with ``requires_grad``) as one flat vector (see
    :func:`module_potential`), written back into the module after every step, and
    ``theta_ref`` (if any) is such a flat vector too.

    ``theta`` is optimized by ``optimizer(list_of_leaf_tensors)`` when that factory is given,
    else by ``torch.optim.<config.optimizer>(..., lr=config.lr)``. The rng lives on the device
    of ``x0`` (or ``theta0``).

    The KL reference is either fixed samples ``x_ref (M, *shape)`` or a parameter
    ``theta_ref``, whose own particle population (from ``x_ref`` or ``N(0, I)``, ``n_ref`` of
    them, burnt in for ``ref_burn_in`` steps) is advanced by one ULA step per iteration.
    """
    _check_config(config)
    check_int(seed, "seed")
    extra: dict[str, Any] = {}
    if isinstance(potential, nn.Module):
        if theta0 is not None:
            raise ValueError("theta0: a module potential's theta is its own parameters; leave "
                             "theta0 out (choose a subset with params=)")
        chosen = _module_params(potential, params)
        params = [p for _, p in chosen]
        fn, theta0 = module_potential(potential, params)
        extra = {"module": potential, "potential_fn": fn,
                 "module_params": tuple(params)}
    else:
        if not callable(potential):
            raise TypeError(f"potential: must be a callable V(x, theta) or an nn.Module V(x), "
                            f"got {type(potential).__name__}")
        if params is not None:
            raise ValueError("params: only for an nn.Module potential (a function potential's "
                             "parameters are theta0)")
        fn = potential
        if theta0 is None:
            raise ValueError("theta0: give the initial parameters of the potential function")
        _check_theta(theta0, "theta0")
    device = theta0.device if x0 is None else x0.device
    gen = torch.Generator(device=device).manual_seed(seed)
    if x0 is None:
        if shape is None:
            raise ValueError("shape: give the particle shape (e.g. shape=2 for (N, 2) "
                             "particles), or x0")
        x0 = torch.randn(config.n_particles, *event_shape(shape), generator=gen,
                         dtype=theta0.dtype, device=device)
    else:
        _check_x(x0, "x0")
        if shape is not None and tuple(x0.shape[1:]) != event_shape(shape):
            raise ValueError(f"shape: {shape!r} differs from x0's particle shape "
                             f"{tuple(x0.shape[1:])}")
    theta = theta0.detach().clone().requires_grad_(True)
    _check_x_theta(x0, theta, "x0")
    _probe(fn, x0, theta)
    if theta_ref is not None:
        _check_theta(theta_ref, "theta_ref")
        theta_ref = theta_ref.detach().clone()
        if theta_ref.shape != theta.shape:
            raise ValueError(f"theta_ref: shape {tuple(theta_ref.shape)} differs from theta's "
                             f"{tuple(theta.shape)}")
        if x_ref is None:
            x_ref = torch.randn(config.n_ref, *x0.shape[1:], generator=gen, dtype=x0.dtype,
                                device=device)
        _check_ref(x_ref, x0, theta)
        x_ref = langevin_sample(fn, x_ref, theta_ref, config.step_size, config.ref_burn_in,
                                generator=gen)
    if x_ref is not None:
        _check_ref(x_ref, x0, theta)
    if config.kl_weight > 0 and x_ref is None:
        raise ValueError("x_ref: kl_weight > 0 needs reference samples (x_ref or theta_ref)")
    if optimizer is not None and not callable(optimizer):
        raise TypeError(f"optimizer: must be a factory params -> torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    return LangevinState(x=x0.detach().clone(), theta=theta,
                         optimizer=make_optimizer([theta], config.optimizer, config.lr,
                                                   optimizer), generator=gen,
                         x_ref=None if x_ref is None else x_ref.detach(), theta_ref=theta_ref,
                         extra=extra)


def _probe(potential: Potential, x0: Tensor, theta: Tensor) -> None:
    """The potential on two particles: shapes that do not fit fail here, named."""
    with torch.no_grad():
        v = _call_potential(potential, x0[:2], theta.detach())
    _check_values(v, min(2, x0.shape[0]), "potential")


def advance_reference(state: LangevinState, potential: Potential | nn.Module, step_size: float,
                      n_steps: int = 1) -> Tensor | None:
    """The reference particles after ``n_steps`` ULA steps under ``theta_ref`` (fixed
    reference samples are returned unchanged)."""
    if state.theta_ref is None or state.x_ref is None:
        return state.x_ref
    return langevin_sample(resolve_potential(potential, state), state.x_ref, state.theta_ref,
                           step_size, n_steps, generator=state.generator)


def apply_gradient(state: LangevinState, grad: Tensor) -> None:
    """One optimizer step on ``state.theta`` with the given gradient of the loss (for a
    module potential, the new values are then copied into the module)."""
    if not isinstance(grad, Tensor) or grad.shape != state.theta.shape:
        raise ValueError(f"grad: must be shaped like theta {tuple(state.theta.shape)}, got "
                         f"{shape_str(grad)}")
    state.optimizer.zero_grad(set_to_none=True)
    state.theta.grad = grad.detach().clone()
    state.optimizer.step()
    check_finite(state.theta.detach(), "optimizer",
                 "its step made theta non-finite (NaN or inf); check its learning rate and "
                 "settings")
    _write_back(state)


def evaluate_reward(reward: Reward, x: Tensor) -> Tensor:
    """``R(x)`` detached and validated: ``(N,)``."""
    if not callable(reward):
        raise TypeError(f"reward: must be callable (x (N, *shape) -> (N,)), got "
                        f"{type(reward).__name__}")
    with torch.no_grad():
        r = reward(x)
    _check_values(r, x.shape[0], "reward")
    return r


def covariance_update(state: LangevinState, x: Tensor, potential: Potential | nn.Module,
                      reward: Reward, config: LangevinConfig
                      ) -> tuple[LangevinState, dict[str, float]]:
    """One optimizer step on ``theta`` from the covariance (+ KL) gradient over the freshly
    sampled particles ``x (N, *shape)``; the reference particles advance by one ULA step."""
    fn = resolve_potential(potential, state)
    x_ref = advance_reference(state, potential, config.step_size)
    r = evaluate_reward(reward, x)
    g = objective_gradient(fn, x, state.theta, r, config.kl_weight, x_ref)
    apply_gradient(state, g)
    new = dataclasses.replace(state, x=x, x_ref=x_ref, step=state.step + 1)
    return new, {"reward": float(r.mean()), "grad_norm": float(g.norm())}


def _single_loop_math(potential: Potential, reward: Reward, x: Tensor, theta: Tensor,
                      z: Tensor, x_ref: Tensor | None, gamma: float, kl_weight: float
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """One iteration's math as a pure function (what ``compile`` compiles): the ULA step
    ``x (N, *shape) -> x'`` with noise ``z``, the rewards ``R(x') (N,)`` and the gradient of
    ``-E[R] + kl_weight KL`` in ``theta`` (shaped like ``theta``), with ``torch.func.grad``."""
    gx = torch.func.grad(lambda y: potential(y, theta).sum())(x)
    x_new = x - gamma * gx + math.sqrt(2 * gamma) * z
    r = reward(x_new)
    n = x.shape[0]
    w = (r - r.mean()) / (n - 1)
    if kl_weight > 0:
        w = w - kl_weight / n

    def surrogate(th: Tensor) -> Tensor:
        s = (w * potential(x_new, th)).sum()
        if kl_weight > 0 and x_ref is not None:
            s = s + kl_weight * potential(x_ref, th).mean()
        return s

    return x_new, torch.func.grad(surrogate)(theta), r


def _eager_math(fn: Potential, reward: Reward, x: Tensor, theta: Tensor, z: Tensor,
                x_ref: Tensor | None, gamma: float, kl_weight: float
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_single_loop_math` with plain autograd (faster than ``torch.func`` in eager
    mode), plus the finiteness flag of :func:`_fused_math`; shapes are checked, values are
    left to the caller (one read of the flag instead of one per tensor)."""
    n = x.shape[0]
    th = theta.detach()
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = _call_potential(fn, xg, th)
        if not isinstance(v, Tensor) or v.shape != (n,):
            _check_values(v, n, "potential")
        if not v.requires_grad:
            raise ValueError("potential: its output does not depend differentiably on x")
        (gx,) = torch.autograd.grad(v.sum(), xg)
    x_new = x.detach() - gamma * gx + math.sqrt(2 * gamma) * z
    with torch.no_grad():
        r = reward(x_new)
    if not isinstance(r, Tensor) or r.shape != (n,):
        _check_values(r, n, "reward")
    w = (r - r.mean()) / (n - 1)
    if kl_weight > 0:
        w = w - kl_weight / n
    with torch.enable_grad():
        th = th.requires_grad_(True)
        vn = _call_potential(fn, x_new, th)
        if not isinstance(vn, Tensor) or vn.shape != (n,):
            _check_values(vn, n, "potential")
        s = (w * vn).sum()
        if kl_weight > 0 and x_ref is not None:
            vr = _call_potential(fn, x_ref.detach(), th)
            if not isinstance(vr, Tensor) or vr.shape != (x_ref.shape[0],):
                _check_values(vr, x_ref.shape[0], "potential")
            s = s + kl_weight * vr.mean()
        (g,) = torch.autograd.grad(s, th, allow_unused=True)
    g = torch.zeros_like(th) if g is None else g
    ok = torch.isfinite(x_new).all() & torch.isfinite(g).all() & torch.isfinite(r).all()
    return x_new, g, r, ok


def _fused_math(fn: Potential, reward: Reward, config: LangevinConfig
                ) -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    """:func:`_single_loop_math` plus one finiteness flag over its outputs (so that a
    validated step reads one value back instead of three)."""
    def math_fn(x: Tensor, theta: Tensor, z: Tensor, x_ref: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x_new, g, r = _single_loop_math(fn, reward, x, theta, z, x_ref, config.step_size,
                                        config.kl_weight)
        ok = torch.isfinite(x_new).all() & torch.isfinite(g).all() & torch.isfinite(r).all()
        return x_new, g, r, ok

    return math_fn


def _compiled_math(state: LangevinState, fn: Potential, reward: Reward,
                   config: LangevinConfig
                   ) -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``torch.compile(_fused_math)`` for this potential, reward and config, built once
    per state lineage (kept in ``state.extra``; recompiled when one of them changes)."""
    backend = "inductor" if config.compile is True else str(config.compile)
    key = (fn, reward, config.step_size, config.kl_weight, backend)
    cached = state.extra.get("compiled")
    if cached is None or cached[0] != key:
        with torch.no_grad():  # a reward of the wrong shape is named here, not by the tracer
            r = reward(state.x)
        if not isinstance(r, Tensor) or r.shape != (state.x.shape[0],):
            _check_values(r, state.x.shape[0], "reward")
        cached = (key, torch.compile(_fused_math(fn, reward, config), backend=backend,
                                     fullgraph=True))
        state.extra["compiled"] = cached
    return cached[1]


def _run_step(state: LangevinState, potential: Potential | nn.Module, reward: Reward,
              config: LangevinConfig) -> tuple[LangevinState, dict[str, float]]:
    """:func:`step`: the math eagerly or compiled (``config.compile``), from the same random
    stream, so both give the same result up to float rounding. Value checks run once, on
    the outputs (when enabled)."""
    if not callable(reward):
        raise TypeError(f"reward: must be callable (x (N, *shape) -> (N,)), got "
                        f"{type(reward).__name__}")
    fn = resolve_potential(potential, state)
    x = state.x
    _check_x(x)  # theta's values were checked after the last optimizer step
    check_generator(state.generator, x.device)
    z = torch.randn(x.shape, generator=state.generator, dtype=x.dtype, device=x.device)
    x_ref = advance_reference(state, potential, config.step_size)
    if config.kl_weight > 0:
        if x_ref is None:
            raise ValueError("x_ref: kl_weight > 0 needs reference samples (x_ref or theta_ref)")
        _check_ref(x_ref, x, state.theta)
    ref = None if x_ref is None or config.kl_weight == 0 else x_ref.detach()
    if config.compile:
        compiled = _compiled_math(state, fn, reward, config)
        with torch.no_grad():  # torch.func.grad inside ignores it; nothing else records
            x_new, g, r, ok = compiled(x.detach(), state.theta.detach(), z, ref)
    else:
        x_new, g, r, ok = _eager_math(fn, reward, x, state.theta, z, ref, config.step_size,
                                      config.kl_weight)
    if not isinstance(r, Tensor) or r.shape != (x.shape[0],):
        raise ValueError(f"reward: must return one value per particle, shape ({x.shape[0]},), "
                         f"got {shape_str(r)}")
    if validation_enabled() and not bool(ok):
        for v, what in ((r, "reward: returned non-finite values (NaN or inf)"),
                        (x_new, "potential: its gradient in x is not finite (NaN or inf)"),
                        (g, "potential: its gradient in theta is not finite (NaN or inf)")):
            if not bool(torch.isfinite(v).all()):
                raise ValueError(what)
    apply_gradient(state, g)
    new = dataclasses.replace(state, x=x_new, x_ref=x_ref, step=state.step + 1)
    return new, {"reward": float(r.mean()), "grad_norm": float(g.norm())}


def _check_state(state: LangevinState) -> LangevinState:
    if not isinstance(state, LangevinState):
        raise TypeError(f"state: must be a LangevinState from init, got {type(state).__name__}")
    return state


def step(state: LangevinState, potential: Potential | nn.Module, reward: Reward,
         config: LangevinConfig = LangevinConfig()) -> tuple[LangevinState, dict[str, float]]:
    """One single-loop iteration: one ULA step with the current ``theta``, then one
    optimizer step on ``theta`` from the covariance (+ KL) gradient over the new particles.

    Returns the new state and ``{"reward": mean R over the particles, "grad_norm": ...}``.
    With ``config.compile`` the math (ULA step, rewards, gradient) runs as one
    ``torch.compile(fullgraph=True)`` graph built on the first call (the potential and reward
    must then be traceable: tensor code without data-dependent Python control flow); the
    random stream is the same as in eager mode.
    """
    _check_state(state)
    _check_config(config)
    return _run_step(state, potential, reward, config)


StepFn = Callable[[LangevinState, Potential, Reward, Any],
                  tuple[LangevinState, dict[str, float]]]


def fit(potential: Potential | nn.Module, reward: Reward, theta0: Tensor | None,
        config: LangevinConfig = LangevinConfig(), n_steps: int = 5000, *,
        step_fn: StepFn = step, state: LangevinState | None = None, log_every: int = 1,
        desc: str = "implicit langevin", **init_kwargs: Any
        ) -> tuple[LangevinState, dict[str, list]]:
    """Run ``n_steps`` iterations of ``step_fn`` (default: the single loop) with a progress bar.

    ``init_kwargs`` go to :func:`init` (``shape``, ``x0``, ``x_ref``, ``theta_ref``, ``seed``,
    ``params``, ``optimizer``) unless a ``state`` is given. The history holds, every
    ``log_every`` steps: ``step``, ``reward`` (particle mean, before the theta update),
    ``kl`` (importance estimate of ``KL(pi_ref || pi_theta)`` on the reference particles when
    ``theta_ref`` is known, else NaN), ``grad_norm``, ``theta`` (after the update, as nested
    lists) and ``time`` (seconds spent inside ``step_fn`` so far; logging is not counted).
    """
    from samplegrad._progress import progress

    check_int(n_steps, "n_steps", 0)
    check_int(log_every, "log_every", 1)
    if not callable(step_fn):
        raise TypeError(f"step_fn: must be callable, got {type(step_fn).__name__}")
    if state is None:
        state = init(potential, theta0, config, **init_kwargs)
    else:
        _check_state(state)
    fn = resolve_potential(potential, state)
    hist: dict[str, list] = {k: [] for k in ("step", "reward", "kl", "grad_norm", "theta",
                                             "time")}
    elapsed = 0.0
    bar = progress(range(n_steps), desc=desc, total=n_steps)
    for i in bar:
        t0 = time.perf_counter()
        state, info = step_fn(state, potential, reward, config)
        elapsed += time.perf_counter() - t0
        if (i + 1) % log_every == 0 or i + 1 == n_steps:
            kl = float("nan")
            if state.theta_ref is not None and state.x_ref is not None:
                kl = kl_estimate(fn, state.x_ref, state.theta.detach(), state.theta_ref)
            hist["step"].append(state.step)
            hist["reward"].append(info["reward"])
            hist["kl"].append(kl)
            hist["grad_norm"].append(info["grad_norm"])
            hist["theta"].append(state.theta.detach().tolist())
            hist["time"].append(elapsed)
            bar.set_postfix_str(f"R={info['reward']:.4f}")
    return state, hist
