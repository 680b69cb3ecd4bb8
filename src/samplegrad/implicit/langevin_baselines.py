"""Baselines for the single-loop Langevin optimizer, on the same state and loop.

* :func:`unrolled_step`: run ``n_inner`` (T) ULA steps keeping the autograd graph
  (``create_graph`` through ``grad_x V``), then backpropagate the pathwise gradient of the
  mean reward of the final particles to ``theta``. Memory grows linearly in T. The reward's
  own gradient is used as given: where it is flat (the hard indicator) it contributes zero.
* :func:`nested_step`: run ``n_inner`` ULA steps with ``theta`` fixed (near convergence),
  then one ``theta`` step from the covariance gradient, as the single loop does after one.

Both start their inner chain from fresh ``N(0, I)`` particles (``warm_start=False``) or from
the previous step's particles (``warm_start=True``). Use them with
``fit(..., step_fn=unrolled_step, config=BaselineConfig(...))``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from samplegrad._config import check_bool, check_int
from samplegrad.implicit.langevin import (
    LangevinConfig,
    LangevinState,
    Potential,
    Reward,
    _check_state,
    _check_values,
    advance_reference,
    apply_gradient,
    check_step_size,
    covariance_update,
    kl_gradient,
    langevin_sample,
    potential_and_grad_x,
    resolve_potential,
)


@dataclass(frozen=True)
class BaselineConfig(LangevinConfig):
    """:class:`LangevinConfig` plus the inner chain: its length and where it starts."""

    n_inner: int = 100          # T inner Langevin steps per theta step
    warm_start: bool = False    # start the inner chain from the previous particles

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.n_inner, "n_inner", 1)
        check_bool(self.warm_start, "warm_start")
        if self.compile is not False:
            raise ValueError("compile: the unrolled and nested baselines run eagerly; leave "
                             "compile=False")


def _inner_start(state: LangevinState, config: BaselineConfig) -> Tensor:
    if config.warm_start:
        return state.x.detach()
    return torch.randn(state.x.shape, generator=state.generator, dtype=state.x.dtype,
                       device=state.x.device)


def unrolled_trajectory(potential: Potential, x: Tensor, theta: Tensor, step_size: float,
                        n_steps: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``n_steps`` ULA steps from ``x (N, *shape)`` keeping the graph: the result is a
    differentiable function of ``theta`` (and of ``x``)."""
    gamma = check_step_size(step_size)
    check_int(n_steps, "n_steps", 0)
    x = x.detach().requires_grad_(True)
    for _ in range(n_steps):
        _, gx = potential_and_grad_x(potential, x, theta, create_graph=True)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x - gamma * gx + math.sqrt(2 * gamma) * z
    return x


def _check_config(config: BaselineConfig) -> BaselineConfig:
    if not isinstance(config, BaselineConfig):
        raise TypeError(f"config: the baselines need a BaselineConfig (n_inner, warm_start), "
                        f"got {type(config).__name__}")
    return config


def unrolled_step(state: LangevinState, potential: Potential | nn.Module, reward: Reward,
                  config: BaselineConfig = BaselineConfig()
                  ) -> tuple[LangevinState, dict[str, float]]:
    """Backpropagation through ``config.n_inner`` Langevin steps (pathwise reward gradient);
    the KL term, if any, uses the covariance-free estimator on the final particles."""
    _check_state(state)
    _check_config(config)
    if not callable(reward):
        raise TypeError(f"reward: must be callable, got {type(reward).__name__}")
    fn = resolve_potential(potential, state)
    x0 = _inner_start(state, config)
    with torch.enable_grad():
        x = unrolled_trajectory(fn, x0, state.theta, config.step_size, config.n_inner,
                                generator=state.generator)
        r = reward(x)
        _check_values(r, x.shape[0], "reward")
        g = None  # a reward flat in x (a hard indicator) contributes no pathwise gradient
        if r.requires_grad:
            (g,) = torch.autograd.grad(-r.mean(), state.theta, allow_unused=True)
    g = torch.zeros_like(state.theta) if g is None else g.detach()
    x_ref = advance_reference(state, potential, config.step_size)
    if config.kl_weight > 0:
        if x_ref is None:
            raise ValueError("x_ref: kl_weight > 0 needs reference samples (x_ref or theta_ref)")
        g = g + config.kl_weight * kl_gradient(fn, x.detach(), state.theta, x_ref)
    apply_gradient(state, g)
    new = dataclasses.replace(state, x=x.detach(), x_ref=x_ref, step=state.step + 1)
    return new, {"reward": float(r.detach().mean()), "grad_norm": float(g.norm())}


def nested_step(state: LangevinState, potential: Potential | nn.Module, reward: Reward,
                config: BaselineConfig = BaselineConfig(warm_start=True)
                ) -> tuple[LangevinState, dict[str, float]]:
    """``config.n_inner`` Langevin steps with ``theta`` fixed, then one covariance step."""
    _check_state(state)
    _check_config(config)
    x = langevin_sample(resolve_potential(potential, state), _inner_start(state, config),
                        state.theta, config.step_size, config.n_inner,
                        generator=state.generator)
    return covariance_update(state, x, potential, reward, config)
