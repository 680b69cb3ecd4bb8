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
from torch import Tensor

from samplegrad._config import check_bool, check_int
from samplegrad.implicit.langevin import (
    LangevinConfig,
    LangevinState,
    Potential,
    Reward,
    advance_reference,
    apply_gradient,
    check_step_size,
    covariance_update,
    kl_gradient,
    langevin_sample,
    potential_and_grad_x,
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


def _inner_start(state: LangevinState, config: BaselineConfig) -> Tensor:
    if config.warm_start:
        return state.x.detach()
    return torch.randn(state.x.shape, generator=state.generator, dtype=state.x.dtype,
                       device=state.x.device)


def unrolled_trajectory(potential: Potential, x: Tensor, theta: Tensor, step_size: float,
                        n_steps: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``n_steps`` ULA steps from ``x (N, d)`` keeping the graph: the result is a
    differentiable function of ``theta`` (and of ``x``)."""
    gamma = check_step_size(step_size)
    x = x.detach().requires_grad_(True)
    for _ in range(n_steps):
        _, gx = potential_and_grad_x(potential, x, theta, create_graph=True)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x - gamma * gx + math.sqrt(2 * gamma) * z
    return x


def unrolled_step(state: LangevinState, potential: Potential, reward: Reward,
                  config: BaselineConfig = BaselineConfig()
                  ) -> tuple[LangevinState, dict[str, float]]:
    """Backpropagation through ``config.n_inner`` Langevin steps (pathwise reward gradient);
    the KL term, if any, uses the covariance-free estimator on the final particles."""
    x0 = _inner_start(state, config)
    with torch.enable_grad():
        x = unrolled_trajectory(potential, x0, state.theta, config.step_size, config.n_inner,
                                generator=state.generator)
        r = reward(x)
        if not isinstance(r, Tensor) or r.shape != (x.shape[0],) or not torch.isfinite(r).all():
            raise ValueError(f"reward: must return finite values shaped ({x.shape[0]},)")
        (g,) = torch.autograd.grad(-r.mean(), state.theta, allow_unused=True)
    g = torch.zeros_like(state.theta) if g is None else g.detach()
    x_ref = advance_reference(state, potential, config.step_size)
    if config.kl_weight > 0:
        if x_ref is None:
            raise ValueError("x_ref: kl_weight > 0 needs reference samples (x_ref or theta_ref)")
        g = g + config.kl_weight * kl_gradient(potential, x.detach(), state.theta, x_ref)
    apply_gradient(state, g)
    new = dataclasses.replace(state, x=x.detach(), x_ref=x_ref, step=state.step + 1)
    return new, {"reward": float(r.detach().mean()), "grad_norm": float(g.norm())}


def nested_step(state: LangevinState, potential: Potential, reward: Reward,
                config: BaselineConfig = BaselineConfig(warm_start=True)
                ) -> tuple[LangevinState, dict[str, float]]:
    """``config.n_inner`` Langevin steps with ``theta`` fixed, then one covariance step."""
    x = langevin_sample(potential, _inner_start(state, config), state.theta,
                        config.step_size, config.n_inner, generator=state.generator)
    return covariance_update(state, x, potential, reward, config)
