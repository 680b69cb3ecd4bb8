"""Implicit Diffusion, finite horizon: finetune a DDPM toward a reward (METHODS.md section 2).

Objective over the network parameters ``theta`` (minimized):

    loss(theta) = -E[ R(x_0) ] + kl_weight * KL(path_theta || path_ref),

the expectation over paths of the T-step ancestral sampler. Both models share the per-step
Gaussian variance ``sigma_j^2``, so the path KL is ``E[sum_j k_j]`` with
``k_j = ||mu_theta(x_{j+1}, j) - mu_ref(x_{j+1}, j)||^2 / (2 sigma_j^2)``; with the noise held
fixed (reparameterized path), ``R(x_0) - kl_weight * sum_j k_j`` is one differentiable
function of ``theta`` along the path, and its gradient is what both estimators compute.

* ``adjoint_grad``: the adjoint (discrete, exact) along a stored path: ``a = grad R(x_0)``,
  then for ``j = 0..T-1`` one vector-Jacobian product of ``(mu_theta, k_j)`` at ``x_{j+1}``
  gives the new ``a`` and the ``theta`` contribution. One step's graph lives at a time.
* Queue (``finetune_init`` / ``finetune_step``): ``T`` populations at the ``T`` stages of the
  sampler; each iteration advances all of them by one step with the current ``theta`` in
  one batched network call, takes the finished population's adjoint gradient, makes one Adam
  step, and restarts that population from fresh noise. The finished path was produced under
  the last ``T`` values of ``theta`` (the paper's approximation); the adjoint re-evaluates
  every step with the *current* ``theta`` at the stored states (no ``theta`` history kept).
* Baseline (``unrolled_init`` / ``unrolled_step``): fresh noise, the full T-step sampler
  with autograd, ``backward`` through the unrolled graph.

Parameters are a dict of tensors used through ``torch.func.functional_call`` on ``model``
(whose own weights are ignored); Adam is functional (``adam_init`` / ``adam_update``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from samplegrad.diffusion.ddpm import draw_noise, step_mean
from samplegrad.diffusion.schedules import SamplerSchedule

Params = dict[str, Tensor]
RewardFn = Callable[[Tensor], Tensor]

__all__ = [
    "AdamState", "FinetuneConfig", "FinetuneState", "UnrolledState", "adam_init",
    "adam_update", "adjoint_grad", "adjoint_step", "advance", "finetune_init", "finetune_step",
    "path_kl", "unrolled_init", "unrolled_loss", "unrolled_step",
]


@dataclass
class FinetuneConfig:
    """Settings shared by the queue (implicit) and the unrolled baseline."""

    pop_size: int = 32  # samples per population (= batch of one theta step)
    lr: float = 3e-4  # Adam step size
    kl_weight: float = 0.1  # lambda in front of the path KL (0 disables it)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0

    def check(self) -> None:
        if self.pop_size < 1:
            raise ValueError(f"pop_size must be >= 1, got {self.pop_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")


# ---------------------------------------------------------------- functional Adam
class AdamState(NamedTuple):
    m: Params
    v: Params
    count: int


def adam_init(params: Params) -> AdamState:
    return AdamState({k: torch.zeros_like(p) for k, p in params.items()},
                     {k: torch.zeros_like(p) for k, p in params.items()}, 0)


def adam_update(grads: Params, state: AdamState, params: Params,
                cfg: FinetuneConfig) -> tuple[Params, AdamState]:
    """One Adam step (minimization); returns new leaf parameters and the new moments."""
    c = state.count + 1
    m, v, new = {}, {}, {}
    with torch.no_grad():
        for k, p in params.items():
            g = grads[k]
            m[k] = state.m[k] * cfg.beta1 + (1 - cfg.beta1) * g
            v[k] = state.v[k] * cfg.beta2 + (1 - cfg.beta2) * g * g
            mhat = m[k] / (1 - cfg.beta1**c)
            vhat = v[k] / (1 - cfg.beta2**c)
            new[k] = (p - cfg.lr * mhat / (vhat.sqrt() + cfg.eps)).requires_grad_(True)
    return new, AdamState(m, v, c)


# ---------------------------------------------------------------- model helpers
def _eps_fn(model: nn.Module, params: Params) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, t: torch.func.functional_call(model, params, (x, t))


def _check_path(path: Tensor, sched: SamplerSchedule) -> None:
    if not isinstance(path, Tensor) or path.dim() != 3 or path.shape[0] != sched.n_steps + 1:
        shape = tuple(path.shape) if isinstance(path, Tensor) else type(path).__name__
        raise ValueError(f"path must be shaped (T + 1, N, d) with T = {sched.n_steps}, "
                         f"got {shape}")


def _reward(reward_fn: RewardFn, x0: Tensor) -> Tensor:
    r = reward_fn(x0)
    if not isinstance(r, Tensor) or r.shape != x0.shape[:1]:
        shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(f"reward_fn must map (N, d) to (N,), got {shape} for N = "
                         f"{x0.shape[0]}")
    if not torch.isfinite(r).all():
        raise ValueError("reward_fn returned non-finite values")
    return r


def _step_kl(mu: Tensor, mu_ref: Tensor, sigma: Tensor) -> Tensor:
    """``||mu - mu_ref||^2 / (2 sigma^2)`` per row: ``(N, d) -> (N,)``."""
    return (mu - mu_ref).pow(2).sum(-1) / (2.0 * sigma.to(mu.dtype) ** 2)


def path_kl(model: nn.Module, params: Params, ref_params: Params, path: Tensor,
            sched: SamplerSchedule) -> Tensor:
    """Per-sample path KL integrand ``sum_j k_j`` along ``path`` ``(T+1, N, d)``: ``(N,)``.

    Its mean over paths drawn with ``params`` estimates ``KL(path_theta || path_ref)``.
    """
    _check_path(path, sched)
    f, f_ref = _eps_fn(model, params), _eps_fn(model, ref_params)
    total = path.new_zeros(path.shape[1])
    with torch.no_grad():
        for j in range(sched.n_steps):
            total += _step_kl(step_mean(f, path[j + 1], j, sched),
                              step_mean(f_ref, path[j + 1], j, sched), sched.sigma[j])
    return total


# ---------------------------------------------------------------- adjoint
def adjoint_step(model: nn.Module, params: Params, ref_params: Params | None, x: Tensor,
                 j: int, a: Tensor, sched: SamplerSchedule,
                 kl_scale: float) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """One backward step of the adjoint at state ``x = x_{j+1}`` ``(N, d)``.

    With ``s = <a, mu_theta(x, j)> - kl_scale * sum_n k_j`` returns ``(ds/dx, ds/dtheta,
    k_j (N,))``; ``ds/dtheta`` follows the order of ``params.values()``.
    """
    x = x.detach().requires_grad_(True)
    plist = list(params.values())
    with torch.enable_grad():
        mu = step_mean(_eps_fn(model, params), x, j, sched)
        s = (mu * a).sum()
        if kl_scale > 0:
            mu_ref = step_mean(_eps_fn(model, ref_params), x, j, sched)
            k = _step_kl(mu, mu_ref, sched.sigma[j])
            s = s - kl_scale * k.sum()
        else:
            k = x.new_zeros(x.shape[0])
        grads = torch.autograd.grad(s, [x, *plist], allow_unused=True)
    gp = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(plist, grads[1:]))
    return grads[0], gp, k.detach()


def adjoint_grad(model: nn.Module, params: Params, ref_params: Params | None, path: Tensor,
                 sched: SamplerSchedule, reward_fn: RewardFn,
                 kl_weight: float = 0.0) -> tuple[Params, dict[str, float]]:
    """Gradient of ``loss = -mean_n [R(x_0) - kl_weight * sum_j k_j]`` along ``path``.

    ``path`` ``(T+1, N, d)`` with ``path[j] = x_j`` (noise held fixed: only the states are
    needed). Every step is recomputed with ``params``. Returns ``(grads, info)`` with
    ``info = {"reward": mean R(x_0), "kl": mean sum_j k_j}``.
    """
    _check_path(path, sched)
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    if kl_weight > 0 and ref_params is None:
        raise ValueError("ref_params is required when kl_weight > 0")
    n = path.shape[1]
    x0 = path[0].detach().requires_grad_(True)
    with torch.enable_grad():
        r = _reward(reward_fn, x0)
        (a,) = torch.autograd.grad(r.sum() / n, x0)
    acc = [torch.zeros_like(p) for p in params.values()]
    kl = path.new_zeros(n)
    for j in range(sched.n_steps):
        a, gp, k = adjoint_step(model, params, ref_params, path[j + 1], j, a, sched,
                                kl_weight / n)
        for buf, g in zip(acc, gp):
            buf.add_(g)
        kl += k
    grads = {name: -g for name, g in zip(params, acc)}  # ascent on J -> descent on loss
    return grads, {"reward": r.detach().mean().item(), "kl": kl.mean().item()}


# ---------------------------------------------------------------- queue (implicit)
class FinetuneState(NamedTuple):
    """Explicit state of the queue. ``paths[p, j]`` is ``x_j`` of population ``p``;
    ``stage[p]`` the steps it has done (its current state is ``paths[p, T - stage[p]]``)."""

    params: Params
    opt: AdamState
    paths: Tensor  # (T, T + 1, N, d)
    stage: Tensor  # (T,) long
    iteration: int
    generator: torch.Generator


def advance(model: nn.Module, params: Params, paths: Tensor, stage: Tensor, slots: Tensor,
            sched: SamplerSchedule, generator: torch.Generator) -> None:
    """Advance populations ``slots`` by one sampler step each, in ONE network call.

    Writes the new states into ``paths`` and increments ``stage`` in place.
    """
    t_total = sched.n_steps
    if slots.numel() == 0:
        return
    if bool((stage[slots] >= t_total).any()):
        raise ValueError("cannot advance a finished population")
    n, d = paths.shape[2], paths.shape[3]
    j = t_total - stage[slots] - 1  # step index of each population
    cur = paths[slots, j + 1]  # (S, N, d)
    noise = torch.randn(cur.shape, generator=generator, dtype=paths.dtype)
    rows = j.repeat_interleave(n)
    with torch.no_grad():
        mu = step_mean(_eps_fn(model, params), cur.reshape(-1, d), rows, sched)
        x = mu.reshape(cur.shape) + sched.sigma.to(paths.dtype)[j][:, None, None] * noise
    paths[slots, j] = x
    stage[slots] += 1


def finetune_init(model: nn.Module, params: Params, sched: SamplerSchedule,
                  cfg: FinetuneConfig, dim: int = 64) -> FinetuneState:
    """Fill the queue under the initial ``params``: population ``p`` has done ``p`` steps.

    Costs ``T - 1`` batched network calls (the warm-up); afterwards every ``finetune_step``
    emits one finished population.
    """
    cfg.check()
    t_total = sched.n_steps
    if t_total < 1:
        raise ValueError(f"the schedule must have T >= 1 steps, got {t_total}")
    gen = torch.Generator().manual_seed(cfg.seed)
    dtype = next(iter(params.values())).dtype
    paths = torch.zeros(t_total, t_total + 1, cfg.pop_size, dim, dtype=dtype)
    paths[:, t_total] = torch.randn(t_total, cfg.pop_size, dim, generator=gen, dtype=dtype)
    stage = torch.zeros(t_total, dtype=torch.long)
    slots = torch.arange(t_total)
    for i in range(t_total - 1):
        advance(model, params, paths, stage, slots[i + 1:], sched, gen)
    params = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}
    return FinetuneState(params, adam_init(params), paths, stage, 0, gen)


def finetune_step(state: FinetuneState, model: nn.Module, ref_params: Params | None,
                  sched: SamplerSchedule, reward_fn: RewardFn,
                  cfg: FinetuneConfig) -> tuple[FinetuneState, dict[str, float]]:
    """One iteration: advance all T populations (one batched call), adjoint gradient of the
    finished one, one Adam step, restart it from fresh noise.

    The ``paths``/``stage`` buffers are updated in place (they are large); the returned state
    holds them together with the new parameters and optimizer state.
    """
    t_total = sched.n_steps
    if state.paths.shape[:2] != (t_total, t_total + 1):
        raise ValueError(f"state was built for T = {state.paths.shape[0]}, schedule has "
                         f"T = {t_total}")
    advance(model, state.params, state.paths, state.stage, torch.arange(t_total), sched,
            state.generator)
    done = (state.stage == t_total).nonzero().flatten()
    if done.numel() != 1:
        raise ValueError(f"corrupt queue: {done.numel()} populations finished at once")
    p = int(done[0])
    grads, info = adjoint_grad(model, state.params, ref_params, state.paths[p], sched,
                               reward_fn, cfg.kl_weight)
    params, opt = adam_update(grads, state.opt, state.params, cfg)
    state.paths[p, t_total] = torch.randn(state.paths.shape[2:], generator=state.generator,
                                          dtype=state.paths.dtype)
    state.stage[p] = 0
    info["finished_slot"] = p
    return state._replace(params=params, opt=opt, iteration=state.iteration + 1), info


# ---------------------------------------------------------------- unrolled baseline
class UnrolledState(NamedTuple):
    params: Params
    opt: AdamState
    iteration: int
    generator: torch.Generator


def unrolled_loss(model: nn.Module, params: Params, ref_params: Params | None, noise: Tensor,
                  sched: SamplerSchedule, reward_fn: RewardFn,
                  kl_weight: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """The same loss as ``adjoint_grad``, on a fresh path from ``noise`` ``(T+1, N, d)``,
    with autograd through the whole unrolled sampler (the graph of all T steps is kept)."""
    if noise.dim() != 3 or noise.shape[0] != sched.n_steps + 1:
        raise ValueError(f"noise must be shaped (T + 1, N, d) with T = {sched.n_steps}, "
                         f"got {tuple(noise.shape)}")
    f = _eps_fn(model, params)
    f_ref = _eps_fn(model, ref_params) if kl_weight > 0 else None
    x = noise[-1]
    kl = noise.new_zeros(noise.shape[1])
    for j in reversed(range(sched.n_steps)):
        mu = step_mean(f, x, j, sched)
        if f_ref is not None:
            kl = kl + _step_kl(mu, step_mean(f_ref, x, j, sched), sched.sigma[j])
        x = mu + sched.sigma[j].to(x.dtype) * noise[j]
    r = _reward(reward_fn, x)
    loss = -(r - kl_weight * kl).mean()
    return loss, {"reward": r.detach().mean().item(), "kl": kl.detach().mean().item()}


def unrolled_init(params: Params, cfg: FinetuneConfig) -> UnrolledState:
    cfg.check()
    params = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}
    return UnrolledState(params, adam_init(params), 0, torch.Generator().manual_seed(cfg.seed))


def unrolled_step(state: UnrolledState, model: nn.Module, ref_params: Params | None,
                  sched: SamplerSchedule, reward_fn: RewardFn, cfg: FinetuneConfig,
                  dim: int = 64) -> tuple[UnrolledState, dict[str, float]]:
    """One theta step of the baseline: T sequential steps with graph, then backward."""
    dtype = next(iter(state.params.values())).dtype
    noise = draw_noise(sched, cfg.pop_size, dim, state.generator, dtype)
    loss, info = unrolled_loss(model, state.params, ref_params, noise, sched, reward_fn,
                               cfg.kl_weight)
    g = torch.autograd.grad(loss, list(state.params.values()), allow_unused=True)
    grads = {k: torch.zeros_like(p) if gi is None else gi
             for (k, p), gi in zip(state.params.items(), g)}
    params, opt = adam_update(grads, state.opt, state.params, cfg)
    return state._replace(params=params, opt=opt, iteration=state.iteration + 1), info
