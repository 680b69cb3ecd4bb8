"""What practitioners use to finetune a DDPM toward a reward, beside Implicit Diffusion's queue
(docs/methods.md#finetuning-baselines). Same objective, same model contract, same optimizer
convention and the same state as the unrolled baseline of :mod:`.finetune`:

* **DRaFT-K** (``draft_init`` / ``draft_step``): the T-step sampler from fresh noise, with
  autograd through the *last K* steps only (the first ``T - K`` run without a graph);
  ``grad_steps = T`` is full backprop (the unrolled baseline), and ``checkpoint=True``
  recomputes each step's activations in the backward pass instead of keeping them
  (AlignProp-style memory: one step's activations at a time).
* **DDPO** (``ddpo_init`` / ``ddpo_step``): policy gradient over the sampler's Gaussian
  transitions ``x_j ~ N(mu_theta(x_{j+1}, j), sigma_j^2)``; the reward is only evaluated,
  never differentiated (any black-box score works). Trajectories are sampled with the
  current weights, advantages are the rewards centred (and scaled, by default) over the
  batch (and divided by their std, by default; else scaled to a leave-one-out baseline,
  which makes the first inner step an unbiased policy gradient), and ``inner_epochs``
  passes of the clipped importance-weighted objective (summed over the steps) follow.

The KL to the initial weights: DRaFT differentiates the per-step path-KL terms of the steps
it keeps a graph for (the others are reported but not differentiated); DDPO folds the
per-sample path KL into the reward, ``R - kl_weight * sum_j k_j``, as a value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from samplegrad._config import check_bool, check_int, check_real
from samplegrad._optim import OptimizerFactory
from samplegrad.diffusion.ddpm import draw_noise, step_mean
from samplegrad.diffusion.schedules import SamplerSchedule
from samplegrad.implicit.finetune import (
    FinetuneConfig,
    RewardFn,
    UnrolledState,
    _apply,
    _check_reward_fn,
    _check_sched,
    _eps_fn,
    _optimized,
    _reward,
    _schedule_on,
    _step_kl,
    unrolled_init,
)

__all__ = ["DDPOConfig", "DraftConfig", "ddpo_init", "ddpo_step", "draft_init", "draft_step",
           "transition_log_prob"]


@dataclass(frozen=True)
class DraftConfig(FinetuneConfig):
    """:class:`FinetuneConfig` plus DRaFT's truncation."""

    grad_steps: int | None = 1  # K: backprop through the last K steps (None: all T)
    checkpoint: bool = False  # recompute each kept step's activations in the backward pass

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grad_steps is not None:
            check_int(self.grad_steps, "grad_steps", 1)
        check_bool(self.checkpoint, "checkpoint")


@dataclass(frozen=True)
class DDPOConfig(FinetuneConfig):
    """:class:`FinetuneConfig` plus DDPO's policy-gradient settings."""

    clip: float = 1e-4  # PPO clip range of the per-step likelihood ratio (DDPO's default)
    inner_epochs: int = 1  # optimizer steps on each batch of trajectories
    normalize_advantages: bool = True  # divide the centred rewards by their std

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real(self.clip, "clip", gt=0)
        check_int(self.inner_epochs, "inner_epochs", 1)
        check_bool(self.normalize_advantages, "normalize_advantages")


def _check(cfg: FinetuneConfig, cls: type) -> None:
    if not isinstance(cfg, cls):
        raise TypeError(f"cfg: must be a {cls.__name__}, got {type(cfg).__name__}")


def _check_state(state: UnrolledState, name: str) -> None:
    if not isinstance(state, UnrolledState):
        raise TypeError(f"state: must be the state from {name}, got {type(state).__name__}")


def _begin(state: UnrolledState, model: nn.Module, sched: SamplerSchedule, reward_fn: RewardFn,
           cfg: FinetuneConfig, cls: type, init: str
           ) -> tuple[dict[str, Tensor], SamplerSchedule, Tensor]:
    """A step's checked arguments: the optimized parameters, the schedule on their device and
    fresh sampler noise ``(T+1, pop_size, *shape)`` from the state's rng."""
    _check_state(state, init)
    _check_sched(sched)
    _check(cfg, cls)
    _check_reward_fn(reward_fn)
    params = _optimized(model, state.optimizer)
    p0 = next(iter(params.values()))
    sched = _schedule_on(sched, p0.device)
    noise = draw_noise(sched, cfg.pop_size, state.shape, state.generator, p0.dtype,
                       device=p0.device)
    return params, sched, noise


# ---------------------------------------------------------------- DRaFT-K
def draft_init(model: nn.Module, cfg: DraftConfig, shape: int | tuple[int, ...], *,
               params: Iterable[Tensor] | None = None,
               optimizer: OptimizerFactory | None = None) -> UnrolledState:
    """The state of :func:`samplegrad.implicit.finetune.unrolled_init` (optimizer over
    ``params``, frozen KL reference, noise rng, event ``shape``)."""
    _check(cfg, DraftConfig)
    return unrolled_init(model, cfg, shape, params=params, optimizer=optimizer)


def draft_loss(model: nn.Module, params: dict[str, Tensor], ref_params: dict[str, Tensor],
               noise: Tensor, sched: SamplerSchedule, reward_fn: RewardFn,
               cfg: DraftConfig) -> tuple[Tensor, dict[str, float]]:
    """``-mean(R(x_0) - kl_weight * sum_j k_j)`` on the path from ``noise`` ``(T+1, N,
    *shape)``, with a graph through the last ``cfg.grad_steps`` steps only."""
    t_total = sched.n_steps
    k_steps = t_total if cfg.grad_steps is None else min(cfg.grad_steps, t_total)
    f = _eps_fn(model, params)
    f_ref = _eps_fn(model, ref_params) if cfg.kl_weight > 0 else None

    def one_step(x: Tensor, j: int, z: Tensor) -> tuple[Tensor, Tensor]:
        mu = step_mean(f, x, j, sched)
        k = (_step_kl(mu, step_mean(f_ref, x, j, sched), sched.sigma[j]) if f_ref is not None
             else x.new_zeros(x.shape[0]))
        return mu + sched.sigma[j].to(x) * z, k

    x = noise[-1]
    kl_const = noise.new_zeros(noise.shape[1])  # KL of the steps without a graph (a value)
    kl = noise.new_zeros(noise.shape[1])
    for j in reversed(range(t_total)):
        if j >= k_steps:
            with torch.no_grad():
                x, k = one_step(x, j, noise[j])
            kl_const = kl_const + k
        elif cfg.checkpoint:
            x, k = _checkpoint(one_step, x, j, noise[j], use_reentrant=False)
            kl = kl + k
        else:
            x, k = one_step(x, j, noise[j])
            kl = kl + k
    r = _reward(reward_fn, x)
    loss = -(r - cfg.kl_weight * (kl + kl_const)).mean()
    return loss, {"reward": r.detach().mean().item(),
                  "kl": (kl + kl_const).detach().mean().item()}


def draft_step(state: UnrolledState, model: nn.Module, sched: SamplerSchedule,
               reward_fn: RewardFn, cfg: DraftConfig) -> tuple[UnrolledState, dict[str, float]]:
    """One theta step of DRaFT-K: fresh noise, the sampler (graph through the last K steps),
    backward, one optimizer step on ``model`` (in place). ``info``: ``reward``, ``kl``,
    ``grad_norm``."""
    params, sched, noise = _begin(state, model, sched, reward_fn, cfg, DraftConfig, "draft_init")
    loss, info = draft_loss(model, params, state.ref_params, noise, sched, reward_fn, cfg)
    g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    grads = {k: torch.zeros_like(p) if gi is None else gi
             for (k, p), gi in zip(params.items(), g)}
    info["grad_norm"] = _apply(state.optimizer, params, grads)
    return dataclasses.replace(state, iteration=state.iteration + 1), info


# ---------------------------------------------------------------- DDPO
def transition_log_prob(model: nn.Module, params: dict[str, Tensor], path: Tensor, j: int,
                        sched: SamplerSchedule) -> Tensor:
    """``log N(x_j; mu_theta(x_{j+1}, j), sigma_j^2 I)`` up to a constant, per sample:
    ``path`` ``(T+1, N, *shape)`` -> ``(N,)`` (differentiable in ``params``)."""
    mu = step_mean(_eps_fn(model, params), path[j + 1], j, sched)
    return -(path[j] - mu).pow(2).flatten(1).sum(-1) / (2.0 * sched.sigma[j].to(mu) ** 2)


def ddpo_init(model: nn.Module, cfg: DDPOConfig, shape: int | tuple[int, ...], *,
              params: Iterable[Tensor] | None = None,
              optimizer: OptimizerFactory | None = None) -> UnrolledState:
    """The same state as :func:`draft_init`."""
    _check(cfg, DDPOConfig)
    return unrolled_init(model, cfg, shape, params=params, optimizer=optimizer)


def _sample_path(model: nn.Module, params: dict[str, Tensor], ref_params: dict[str, Tensor],
                 noise: Tensor, sched: SamplerSchedule, with_kl: bool
                 ) -> tuple[Tensor, Tensor]:
    """Path ``(T+1, N, *shape)`` from ``noise`` without a graph, and its per-sample KL."""
    f = _eps_fn(model, params)
    f_ref = _eps_fn(model, ref_params) if with_kl else None
    path = torch.empty_like(noise)
    path[-1] = noise[-1]
    kl = noise.new_zeros(noise.shape[1])
    with torch.no_grad():
        for j in reversed(range(sched.n_steps)):
            mu = step_mean(f, path[j + 1], j, sched)
            if f_ref is not None:
                kl += _step_kl(mu, step_mean(f_ref, path[j + 1], j, sched), sched.sigma[j])
            path[j] = mu + sched.sigma[j].to(mu) * noise[j]
    return path, kl


def ddpo_step(state: UnrolledState, model: nn.Module, sched: SamplerSchedule,
              reward_fn: RewardFn, cfg: DDPOConfig) -> tuple[UnrolledState, dict[str, float]]:
    """One batch of DDPO: sample ``pop_size`` trajectories with the current weights, score
    them (values only), then ``inner_epochs`` optimizer steps on the clipped surrogate
    ``-mean_{n,j} min(rho A, clip(rho, 1 - clip, 1 + clip) A)``, ``rho`` the per-step
    likelihood ratio to the sampling weights. Steps with ``sigma_j = 0`` (deterministic) carry
    no likelihood and are skipped. ``info``: ``reward``, ``kl``, ``grad_norm`` (of the last
    inner step), ``clipped`` (fraction of clipped ratios over the inner steps)."""
    params, sched, noise = _begin(state, model, sched, reward_fn, cfg, DDPOConfig, "ddpo_init")
    path, kl = _sample_path(model, params, state.ref_params, noise, sched, cfg.kl_weight > 0)
    with torch.no_grad():
        r = _reward(reward_fn, path[0])
    score = r - cfg.kl_weight * kl
    n = score.numel()
    if n < 2:
        raise ValueError("cfg: DDPO's advantages need pop_size >= 2 trajectories per batch")
    adv = score - score.mean()
    if cfg.normalize_advantages:
        adv = adv / (score.std() + 1e-8)
    else:  # leave-one-out baseline: R_n - mean_{m != n} R_m (unbiased)
        adv = adv * (n / (n - 1))
    steps = [j for j in range(sched.n_steps) if float(sched.sigma[j]) > 0]
    if not steps:
        raise ValueError("sched: every step is deterministic (sigma = 0); DDPO needs a "
                         "stochastic sampler")
    detached = {k: p.detach() for k, p in params.items()}
    with torch.no_grad():
        old = [transition_log_prob(model, detached, path, j, sched) for j in steps]
    n_clipped, n_total, norm = 0, 0, 0.0
    for _ in range(cfg.inner_epochs):
        acc = {k: torch.zeros_like(p) for k, p in params.items()}
        for j, lp_old in zip(steps, old):
            with torch.enable_grad():
                ratio = torch.exp(transition_log_prob(model, params, path, j, sched) - lp_old)
                clipped = ratio.clamp(1 - cfg.clip, 1 + cfg.clip)
                obj = torch.minimum(ratio * adv, clipped * adv)
                loss = -obj.sum() / n  # summed over steps: the policy gradient
                g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for k, gi in zip(params, g):
                if gi is not None:
                    acc[k] += gi
            n_clipped += int(((ratio - 1).abs() > cfg.clip).sum())
            n_total += ratio.numel()
        norm = _apply(state.optimizer, params, acc)
    info = {"reward": r.mean().item(), "kl": kl.mean().item(), "grad_norm": norm,
            "clipped": n_clipped / max(n_total, 1)}
    return dataclasses.replace(state, iteration=state.iteration + 1), info
