"""Implicit Diffusion for Langevin samplers: single-loop optimization through sampling.

A parameterized potential ``V(x, theta)`` (``x (N, d)``, ``theta (p,)`` -> ``(N,)``) defines
``pi_theta ∝ exp(-V(., theta))``; the unadjusted Langevin algorithm (ULA)
``x <- x - gamma grad_x V(x, theta) + sqrt(2 gamma) z`` samples it approximately. We
maximize ``E_{pi_theta}[R] - lam KL(pi_ref || pi_theta)`` (i.e. minimize
``-E[R] + lam KL``) over ``theta`` with:

* reward gradient ``grad_theta E_pi[R] = -Cov_pi(R(x), grad_theta V(x, theta))``, plug-in
  over the particles (reward values only, never ``grad R``);
* KL gradient ``grad_theta KL(pi_ref || pi_theta) = E_ref[grad_theta V] - E_pi[grad_theta V]``
  (a descent step on it pulls ``theta`` toward the reference).

Both are the gradient of one surrogate ``sum_i w_i V(x_i, theta) + lam mean_j V(x_ref_j,
theta)`` with detached weights, so one backward pass gives the whole estimate.

The single loop (docs/methods.md#single-loop) keeps a population of particles warm across ``theta``
updates: each iteration is ONE Langevin step with the current ``theta``, then ONE optimizer
step on ``theta`` from the new particles. API in the optax/blackjax spirit::

    state = init(potential, theta0, LangevinConfig(), dim=2)
    for _ in range(n):
        state, info = step(state, potential, reward, config)
    # or: state, history = fit(potential, reward, theta0, config, n_steps=5000, dim=2)

``state.theta`` is a leaf tensor that the torch optimizer in ``state.optimizer`` updates in
place; everything else in a step is returned as a new state.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from samplegrad._config import check_int, check_real
from samplegrad._optim import OptimizerFactory, check_lr, check_optimizer_name, make_optimizer

Potential = Callable[[Tensor, Tensor], Tensor]
"""``V(x (N, d), theta (p,)) -> (N,)``, differentiable in both arguments."""
Reward = Callable[[Tensor], Tensor]
"""``R(x (N, d)) -> (N,)``; only values are used by the implicit estimator."""


# ----------------------------------------------------------------------------- checks
def check_step_size(step_size: float) -> float:
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size: the Langevin step size gamma must be a finite number > 0, "
                         f"got {step_size!r}")
    return float(step_size)


def _check_x_theta(x: Tensor, theta: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name}: particles must be a tensor shaped (N, d) with N, d >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: particles must be floating point, got {x.dtype}")
    if not isinstance(theta, Tensor) or theta.dim() != 1 or theta.numel() < 1:
        raise ValueError("theta: parameters must be a non-empty 1-D tensor shaped (p,), got "
                         f"{tuple(theta.shape) if isinstance(theta, Tensor) else type(theta)}")
    if not torch.isfinite(theta).all():
        raise ValueError("theta: parameters contain NaN or inf")


def _check_values(v: Tensor, n: int, what: str) -> None:
    if not isinstance(v, Tensor) or v.shape != (n,):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{what}: must return one value per particle, shape ({n},), got {shape}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{what}: returned non-finite values (NaN or inf)")


# ----------------------------------------------------------------------------- sampling
def potential_and_grad_x(potential: Potential, x: Tensor, theta: Tensor, *,
                         create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``V(x, theta)`` ``(N,)`` and ``grad_x V`` ``(N, d)``, validated.

    With ``create_graph`` the gradient stays differentiable in ``x`` and ``theta`` (for
    unrolling); otherwise both outputs are detached.
    """
    _check_x_theta(x, theta)
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        th = theta if create_graph else theta.detach()
        v = potential(xg, th)
        _check_values(v, x.shape[0], "potential")
        (gx,) = torch.autograd.grad(v.sum(), xg, create_graph=create_graph)
    if not torch.isfinite(gx).all():
        raise ValueError("potential: its gradient in x is not finite (NaN or inf)")
    return (v, gx) if create_graph else (v.detach(), gx.detach())


def langevin_step(potential: Potential, x: Tensor, theta: Tensor, step_size: float, *,
                  generator: torch.Generator | None = None) -> Tensor:
    """One ULA step ``x - gamma grad_x V(x, theta) + sqrt(2 gamma) z`` on ``x (N, d)``."""
    gamma = check_step_size(step_size)
    _, gx = potential_and_grad_x(potential, x, theta)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x.detach() - gamma * gx + math.sqrt(2 * gamma) * z


def langevin_sample(potential: Potential, x: Tensor, theta: Tensor, step_size: float,
                    n_steps: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``n_steps`` ULA steps from ``x (N, d)`` with ``theta`` fixed (no graph)."""
    if n_steps < 0:
        raise ValueError(f"n_steps: must be >= 0, got {n_steps}")
    for _ in range(n_steps):
        x = langevin_step(potential, x, theta, step_size, generator=generator)
    return x


# ----------------------------------------------------------------------------- gradients
def _surrogate_grad(potential: Potential, x: Tensor, theta: Tensor, w: Tensor,
                    x_ref: Tensor | None, ref_weight: float) -> Tensor:
    """``grad_theta [sum_i w_i V(x_i, theta) + ref_weight mean_j V(x_ref_j, theta)]``."""
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        v = potential(x.detach(), th)
        _check_values(v, x.shape[0], "potential")
        s = (w.detach() * v).sum()
        if x_ref is not None and ref_weight != 0:
            vr = potential(x_ref.detach(), th)
            _check_values(vr, x_ref.shape[0], "potential")
            s = s + ref_weight * vr.mean()
        (g,) = torch.autograd.grad(s, th, allow_unused=True)
    g = torch.zeros_like(th) if g is None else g
    if not torch.isfinite(g).all():
        raise ValueError("potential: its gradient in theta is not finite (NaN or inf)")
    return g


def _centered_weights(rewards: Tensor) -> Tensor:
    n = rewards.shape[0]
    if n < 2:
        raise ValueError("x: the covariance estimator needs at least 2 particles")
    return (rewards - rewards.mean()) / (n - 1)


def reward_gradient(potential: Potential, x: Tensor, theta: Tensor, rewards: Tensor) -> Tensor:
    """Plug-in ``grad_theta E_pi[R] = -Cov(R, grad_theta V)`` over particles ``x (N, d)``.

    ``rewards (N,)`` are ``R(x)``. Unbiased sample covariance (``1/(N-1)``); returns ``(p,)``.
    """
    _check_x_theta(x, theta)
    _check_values(rewards, x.shape[0], "rewards")
    return -_surrogate_grad(potential, x, theta, _centered_weights(rewards), None, 0.0)


def kl_gradient(potential: Potential, x: Tensor, theta: Tensor, x_ref: Tensor) -> Tensor:
    """``grad_theta KL(pi_ref || pi_theta) = E_ref[grad_theta V] - E_pi[grad_theta V]``.

    ``x (N, d)`` samples ``pi_theta``, ``x_ref (M, d)`` samples ``pi_ref``; returns ``(p,)``.
    """
    _check_x_theta(x, theta)
    _check_x_theta(x_ref, theta, "x_ref")
    w = torch.full((x.shape[0],), -1.0 / x.shape[0], dtype=x.dtype, device=x.device)
    return _surrogate_grad(potential, x, theta, w, x_ref, 1.0)


def objective_gradient(potential: Potential, x: Tensor, theta: Tensor, rewards: Tensor,
                       kl_weight: float = 0.0, x_ref: Tensor | None = None) -> Tensor:
    """Gradient of ``-E[R] + kl_weight KL(pi_ref || pi_theta)`` in one backward: ``(p,)``."""
    _check_x_theta(x, theta)
    _check_values(rewards, x.shape[0], "rewards")
    if kl_weight < 0 or not math.isfinite(kl_weight):
        raise ValueError(f"kl_weight: must be finite and >= 0, got {kl_weight}")
    w = _centered_weights(rewards)
    if kl_weight > 0:
        if x_ref is None:
            raise ValueError("x_ref: kl_weight > 0 needs reference samples (x_ref or theta_ref)")
        _check_x_theta(x_ref, theta, "x_ref")
        w = w - kl_weight / x.shape[0]
    return _surrogate_grad(potential, x, theta, w, x_ref, kl_weight)


@torch.no_grad()
def kl_estimate(potential: Potential, x_ref: Tensor, theta: Tensor, theta_ref: Tensor) -> float:
    """Importance-sampling estimate of ``KL(pi_ref || pi_theta)`` from ``x_ref ~ pi_ref``:
    ``E_ref[V_theta - V_ref] + log E_ref[exp(V_ref - V_theta)]`` (the normalizer ratio)."""
    _check_x_theta(x_ref, theta, "x_ref")
    d = potential(x_ref, theta) - potential(x_ref, theta_ref)
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

    def __post_init__(self) -> None:
        check_real(self.step_size, "step_size", gt=0)
        check_lr(self.lr)
        check_optimizer_name(self.optimizer)
        check_real(self.kl_weight, "kl_weight", ge=0)
        check_int(self.n_particles, "n_particles", 1)
        check_int(self.n_ref, "n_ref", 1)
        check_int(self.ref_burn_in, "ref_burn_in", 0)


@dataclass
class LangevinState:
    """Everything the loop carries. ``theta`` is the optimizer's leaf tensor."""

    x: Tensor                              # (N, d) particles
    theta: Tensor                          # (p,) leaf, requires_grad
    optimizer: torch.optim.Optimizer       # holds the optimizer state (momenta, ...)
    generator: torch.Generator             # the rng
    step: int = 0
    x_ref: Tensor | None = None            # (M, d) reference samples / particles
    theta_ref: Tensor | None = None        # (p,) if the reference is pi_{theta_ref}
    extra: dict[str, Any] = field(default_factory=dict)


def init(potential: Potential, theta0: Tensor, config: LangevinConfig = LangevinConfig(), *,
         dim: int | None = None, x0: Tensor | None = None, x_ref: Tensor | None = None,
         theta_ref: Tensor | None = None, seed: int = 0,
         optimizer: OptimizerFactory | None = None) -> LangevinState:
    """Initial state: particles ``x0`` (or ``N(0, I)`` of shape ``(n_particles, dim)``).

    ``theta`` is optimized by ``optimizer(list_of_leaf_tensors)`` when that factory is given,
    else by ``torch.optim.<config.optimizer>(..., lr=config.lr)``. The rng lives on the device
    of ``x0`` (or ``theta0``).

    The KL reference is either fixed samples ``x_ref (M, d)`` or a parameter ``theta_ref``,
    whose own particle population (from ``x_ref`` or ``N(0, I)``, ``n_ref`` of them, burnt
    in for ``ref_burn_in`` steps) is advanced by one ULA step per iteration.
    """
    check_step_size(config.step_size)
    if not isinstance(theta0, Tensor) or theta0.dim() != 1 or theta0.numel() < 1:
        raise ValueError("theta0: must be a non-empty 1-D tensor shaped (p,)")
    device = theta0.device if x0 is None else x0.device
    gen = torch.Generator(device=device).manual_seed(seed)
    if x0 is None:
        if dim is None or dim < 1:
            raise ValueError("dim: give the particle dimension (or x0)")
        x0 = torch.randn(config.n_particles, dim, generator=gen, dtype=theta0.dtype,
                         device=device)
    theta = theta0.detach().clone().requires_grad_(True)
    _check_x_theta(x0, theta, "x0")
    if theta_ref is not None:
        theta_ref = theta_ref.detach().clone()
        if theta_ref.shape != theta.shape:
            raise ValueError(f"theta_ref: shape {tuple(theta_ref.shape)} differs from theta0's "
                             f"{tuple(theta.shape)}")
        if x_ref is None:
            x_ref = torch.randn(config.n_ref, x0.shape[1], generator=gen, dtype=x0.dtype,
                                device=device)
        x_ref = langevin_sample(potential, x_ref, theta_ref, config.step_size,
                                config.ref_burn_in, generator=gen)
    if x_ref is not None:
        _check_x_theta(x_ref, theta, "x_ref")
        if x_ref.shape[1] != x0.shape[1]:
            raise ValueError(f"x_ref: dimension {x_ref.shape[1]} differs from x0's {x0.shape[1]}")
    if config.kl_weight > 0 and x_ref is None:
        raise ValueError("x_ref: kl_weight > 0 needs reference samples (x_ref or theta_ref)")
    return LangevinState(x=x0.detach().clone(), theta=theta,
                         optimizer=make_optimizer([theta], config.optimizer, config.lr,
                                                   optimizer), generator=gen,
                         x_ref=None if x_ref is None else x_ref.detach(), theta_ref=theta_ref)


def advance_reference(state: LangevinState, potential: Potential, step_size: float,
                      n_steps: int = 1) -> Tensor | None:
    """The reference particles after ``n_steps`` ULA steps under ``theta_ref`` (fixed
    reference samples are returned unchanged)."""
    if state.theta_ref is None or state.x_ref is None:
        return state.x_ref
    return langevin_sample(potential, state.x_ref, state.theta_ref, step_size, n_steps,
                           generator=state.generator)


def apply_gradient(state: LangevinState, grad: Tensor) -> None:
    """One optimizer step on ``state.theta`` with the given gradient of the loss."""
    state.optimizer.zero_grad(set_to_none=True)
    state.theta.grad = grad.detach().clone()
    state.optimizer.step()


def evaluate_reward(reward: Reward, x: Tensor) -> Tensor:
    """``R(x)`` detached and validated: ``(N,)``."""
    with torch.no_grad():
        r = reward(x)
    _check_values(r, x.shape[0], "reward")
    return r


def covariance_update(state: LangevinState, x: Tensor, potential: Potential, reward: Reward,
                      config: LangevinConfig) -> tuple[LangevinState, dict[str, float]]:
    """One optimizer step on ``theta`` from the covariance (+ KL) gradient over the freshly
    sampled particles ``x (N, d)``; the reference particles advance by one ULA step."""
    x_ref = advance_reference(state, potential, config.step_size)
    r = evaluate_reward(reward, x)
    g = objective_gradient(potential, x, state.theta, r, config.kl_weight, x_ref)
    apply_gradient(state, g)
    new = dataclasses.replace(state, x=x, x_ref=x_ref, step=state.step + 1)
    return new, {"reward": float(r.mean()), "grad_norm": float(g.norm())}


def step(state: LangevinState, potential: Potential, reward: Reward,
         config: LangevinConfig = LangevinConfig()) -> tuple[LangevinState, dict[str, float]]:
    """One single-loop iteration: one ULA step with the current ``theta``, then one
    optimizer step on ``theta`` from the covariance (+ KL) gradient over the new particles.

    Returns the new state and ``{"reward": mean R over the particles, "grad_norm": ...}``.
    """
    x = langevin_step(potential, state.x, state.theta, config.step_size,
                      generator=state.generator)
    return covariance_update(state, x, potential, reward, config)


StepFn = Callable[[LangevinState, Potential, Reward, Any],
                  tuple[LangevinState, dict[str, float]]]


def fit(potential: Potential, reward: Reward, theta0: Tensor,
        config: LangevinConfig = LangevinConfig(), n_steps: int = 5000, *,
        step_fn: StepFn = step, state: LangevinState | None = None, log_every: int = 1,
        desc: str = "implicit langevin", **init_kwargs: Any
        ) -> tuple[LangevinState, dict[str, list]]:
    """Run ``n_steps`` iterations of ``step_fn`` (default: the single loop) with a progress bar.

    ``init_kwargs`` go to :func:`init` (``dim``, ``x0``, ``x_ref``, ``theta_ref``, ``seed``,
    ``optimizer``) unless a ``state`` is given. The history holds, every ``log_every``
    steps: ``step``, ``reward`` (particle mean, before the theta update), ``kl`` (importance
    estimate of ``KL(pi_ref || pi_theta)`` on the reference particles when ``theta_ref`` is
    known, else NaN), ``grad_norm``, ``theta`` (after the update) and ``time`` (seconds spent
    inside ``step_fn`` so far; logging is not counted).
    """
    from samplegrad._progress import progress

    if n_steps < 0:
        raise ValueError(f"n_steps: must be >= 0, got {n_steps}")
    if log_every < 1:
        raise ValueError(f"log_every: must be >= 1, got {log_every}")
    if state is None:
        state = init(potential, theta0, config, **init_kwargs)
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
                kl = kl_estimate(potential, state.x_ref, state.theta.detach(), state.theta_ref)
            hist["step"].append(state.step)
            hist["reward"].append(info["reward"])
            hist["kl"].append(kl)
            hist["grad_norm"].append(info["grad_norm"])
            hist["theta"].append(state.theta.detach().tolist())
            hist["time"].append(elapsed)
            bar.set_postfix_str(f"R={info['reward']:.4f}")
    return state, hist
