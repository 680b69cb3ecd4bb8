"""Implicit Diffusion, finite horizon: finetune a DDPM toward a reward (docs/methods.md#finetuning).

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
  one batched network call, takes the finished population's adjoint gradient, makes one
  optimizer step, and restarts that population from fresh noise. The finished path was
  produced under the last ``T`` values of ``theta`` (the paper's approximation); the adjoint
  re-evaluates every step with the *current* ``theta`` at the stored states (no ``theta``
  history kept).
* Baseline (``unrolled_init`` / ``unrolled_step``): fresh noise, the full T-step sampler
  with autograd, backward through the unrolled graph.

The user's noise model ``model(x (N, d), t (N,) long) -> eps (N, d)`` (any ``nn.Module``) is
trained IN PLACE by a ``torch.optim`` optimizer (``FinetuneConfig.optimizer`` + ``lr``, or an
``optimizer=`` factory given to the ``*_init`` function). The state keeps a frozen, detached
copy of the model's initial parameters as the KL reference (evaluated through
``torch.func.functional_call``). Usage::

    sched = sampling_schedule(linear_alpha_bars(1000), n_steps=20)
    cfg = FinetuneConfig(pop_size=16, lr=1e-4, kl_weight=0.1)
    state = finetune_init(model, sched, cfg, dim=64)
    for _ in range(100):
        state, info = finetune_step(state, model, sched, reward_fn, cfg)

The lower-level functions (``adjoint_grad``, ``path_kl``, ``unrolled_loss``) take parameter
dicts ``{name: tensor}`` used through ``functional_call`` on ``model``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from samplegrad._config import check_int, check_real
from samplegrad._optim import OptimizerFactory, check_lr, check_optimizer_name, make_optimizer
from samplegrad.diffusion.ddpm import draw_noise, step_mean
from samplegrad.diffusion.schedules import SamplerSchedule

Params = dict[str, Tensor]
RewardFn = Callable[[Tensor], Tensor]
"""``R(x_0 (N, d)) -> (N,)``, differentiable in ``x_0`` (its gradient starts the adjoint)."""

__all__ = [
    "FinetuneConfig", "FinetuneState", "UnrolledState", "adjoint_grad", "adjoint_step",
    "advance", "finetune_init", "finetune_step", "path_kl", "unrolled_init", "unrolled_loss",
    "unrolled_step",
]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings shared by the queue (implicit) and the unrolled baseline."""

    pop_size: int = 32  # samples per population (= batch of one theta step)
    lr: float = 3e-4  # learning rate of the optimizer
    optimizer: str = "Adam"  # a torch.optim class name (or pass optimizer= to the init)
    kl_weight: float = 0.1  # lambda in front of the path KL (0 disables it)
    seed: int = 0  # seed of the sampler noise

    def __post_init__(self) -> None:
        check_int(self.pop_size, "pop_size", 1)
        check_lr(self.lr)
        check_optimizer_name(self.optimizer)
        check_real(self.kl_weight, "kl_weight", ge=0)
        check_int(self.seed, "seed")


# ---------------------------------------------------------------- model helpers
def _eps_fn(model: nn.Module, params: Params) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, t: torch.func.functional_call(model, params, (x, t))


def _check_model(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _frozen_copy(model: nn.Module) -> Params:
    """Detached copies of all of ``model``'s parameters (the KL reference)."""
    return {k: p.detach().clone() for k, p in _check_model(model).named_parameters()}


def _trainable(model: nn.Module) -> Params:
    params = {k: p for k, p in _check_model(model).named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model: has no parameters with requires_grad=True")
    return params


def _optimized(model: nn.Module, optimizer: torch.optim.Optimizer) -> Params:
    """The parameters of ``model`` that ``optimizer`` updates, by name, in model order."""
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    params = {k: p for k, p in _check_model(model).named_parameters() if id(p) in ids}
    if len(params) != len(ids):
        raise ValueError("model: the optimizer in the state updates tensors that are not "
                         "parameters of this model (pass the model given to the init)")
    return params


def _apply(optimizer: torch.optim.Optimizer, params: Params, grads: Params) -> float:
    """One optimizer step with the given loss gradients; returns their global norm."""
    optimizer.zero_grad(set_to_none=True)
    for k, p in params.items():
        p.grad = grads[k].detach().to(p.dtype)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                 for g in grads.values()]))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def _schedule_on(sched: SamplerSchedule, device: torch.device) -> SamplerSchedule:
    return sched if sched.timesteps.device == device else sched.to(device=device)


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
    return (mu - mu_ref).pow(2).sum(-1) / (2.0 * sigma.to(mu) ** 2)


def path_kl(model: nn.Module, params: Params, ref_params: Params, path: Tensor,
            sched: SamplerSchedule) -> Tensor:
    """Per-sample path KL integrand ``sum_j k_j`` along ``path`` ``(T+1, N, d)``: ``(N,)``.

    Its mean over paths drawn with ``params`` estimates ``KL(path_theta || path_ref)``.
    """
    _check_path(path, sched)
    sched = _schedule_on(sched, path.device)
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
    sched = _schedule_on(sched, path.device)
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
@dataclass
class FinetuneState:
    """Explicit state of the queue. ``paths[p, j]`` is ``x_j`` of population ``p``;
    ``stage[p]`` the steps it has done (its current state is ``paths[p, T - stage[p]]``).
    The model's own parameters are the ones being trained (not held here)."""

    optimizer: torch.optim.Optimizer  # updates the model's parameters in place
    ref_params: Params  # frozen copy of the model's initial parameters (the KL reference)
    paths: Tensor  # (T, T + 1, N, d)
    stage: Tensor  # (T,) long
    generator: torch.Generator  # the sampler noise, on the model's device
    iteration: int = 0


def advance(model: nn.Module, paths: Tensor, stage: Tensor, slots: Tensor,
            sched: SamplerSchedule, generator: torch.Generator) -> None:
    """Advance populations ``slots`` by one sampler step each, in ONE call of ``model``.

    Writes the new states into ``paths`` ``(T, T + 1, N, d)`` and increments ``stage``
    ``(T,)`` in place.
    """
    t_total = sched.n_steps
    if slots.numel() == 0:
        return
    if bool((stage[slots] >= t_total).any()):
        raise ValueError("cannot advance a finished population")
    sched = _schedule_on(sched, paths.device)
    n, d = paths.shape[2], paths.shape[3]
    j = t_total - stage[slots] - 1  # step index of each population
    cur = paths[slots, j + 1]  # (S, N, d)
    noise = torch.randn(cur.shape, generator=generator, dtype=paths.dtype, device=paths.device)
    rows = j.repeat_interleave(n)
    with torch.no_grad():
        mu = step_mean(model, cur.reshape(-1, d), rows, sched)
        x = mu.reshape(cur.shape) + sched.sigma.to(paths.dtype)[j][:, None, None] * noise
    paths[slots, j] = x
    stage[slots] += 1


def finetune_init(model: nn.Module, sched: SamplerSchedule, cfg: FinetuneConfig,
                  dim: int = 64, optimizer: OptimizerFactory | None = None) -> FinetuneState:
    """Fill the queue with the model as it is: population ``p`` has done ``p`` steps.

    Builds the optimizer over the model's trainable parameters (``optimizer(params)`` when
    that factory is given, else ``torch.optim.<cfg.optimizer>(params, lr=cfg.lr)``) and a
    frozen copy of all its parameters (the KL reference). ``dim``: the sample dimension
    ``d``. Costs ``T - 1`` batched network calls (the warm-up); afterwards every
    :func:`finetune_step` emits one finished population. Paths and noise live on the
    device and in the dtype of the model's first trainable parameter.
    """
    t_total = sched.n_steps
    if t_total < 1:
        raise ValueError(f"sched: the schedule must have T >= 1 steps, got {t_total}")
    check_int(dim, "dim", 1)
    ref = _frozen_copy(model)
    params = _trainable(model)
    opt = make_optimizer(params.values(), cfg.optimizer, cfg.lr, optimizer)
    p0 = next(iter(params.values()))
    dtype, device = p0.dtype, p0.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    paths = torch.zeros(t_total, t_total + 1, cfg.pop_size, dim, dtype=dtype, device=device)
    paths[:, t_total] = torch.randn(t_total, cfg.pop_size, dim, generator=gen, dtype=dtype,
                                    device=device)
    stage = torch.zeros(t_total, dtype=torch.long, device=device)
    slots = torch.arange(t_total, device=device)
    for i in range(t_total - 1):
        advance(model, paths, stage, slots[i + 1:], sched, gen)
    return FinetuneState(opt, ref, paths, stage, gen)


def finetune_step(state: FinetuneState, model: nn.Module, sched: SamplerSchedule,
                  reward_fn: RewardFn, cfg: FinetuneConfig
                  ) -> tuple[FinetuneState, dict[str, float]]:
    """One iteration: advance all T populations (one batched call), adjoint gradient of the
    finished one, one optimizer step on ``model`` (in place), restart it from fresh noise.

    The ``paths``/``stage`` buffers are updated in place (they are large). ``info``:
    ``reward`` (mean R of the finished population), ``kl`` (its mean path KL to the
    reference), ``grad_norm`` and ``finished_slot``.
    """
    t_total = sched.n_steps
    if state.paths.shape[:2] != (t_total, t_total + 1):
        raise ValueError(f"sched: state was built for T = {state.paths.shape[0]}, schedule "
                         f"has T = {t_total}")
    sched = _schedule_on(sched, state.paths.device)
    advance(model, state.paths, state.stage, torch.arange(t_total, device=state.stage.device),
            sched, state.generator)
    done = (state.stage == t_total).nonzero().flatten()
    if done.numel() != 1:
        raise ValueError(f"state: corrupt queue, {done.numel()} populations finished at once")
    p = int(done[0])
    params = _optimized(model, state.optimizer)
    grads, info = adjoint_grad(model, params, state.ref_params, state.paths[p], sched,
                               reward_fn, cfg.kl_weight)
    info["grad_norm"] = _apply(state.optimizer, params, grads)
    state.paths[p, t_total] = torch.randn(state.paths.shape[2:], generator=state.generator,
                                          dtype=state.paths.dtype, device=state.paths.device)
    state.stage[p] = 0
    info["finished_slot"] = p
    return dataclasses.replace(state, iteration=state.iteration + 1), info


# ---------------------------------------------------------------- unrolled baseline
@dataclass
class UnrolledState:
    """State of the unrolled baseline: the optimizer (over the model's parameters), the
    frozen KL reference and the noise rng."""

    optimizer: torch.optim.Optimizer
    ref_params: Params
    generator: torch.Generator
    iteration: int = 0


def unrolled_loss(model: nn.Module, params: Params, ref_params: Params | None, noise: Tensor,
                  sched: SamplerSchedule, reward_fn: RewardFn,
                  kl_weight: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """The same loss as ``adjoint_grad``, on a fresh path from ``noise`` ``(T+1, N, d)``,
    with autograd through the whole unrolled sampler (the graph of all T steps is kept)."""
    if noise.dim() != 3 or noise.shape[0] != sched.n_steps + 1:
        raise ValueError(f"noise must be shaped (T + 1, N, d) with T = {sched.n_steps}, "
                         f"got {tuple(noise.shape)}")
    sched = _schedule_on(sched, noise.device)
    f = _eps_fn(model, params)
    f_ref = _eps_fn(model, ref_params) if kl_weight > 0 else None
    x = noise[-1]
    kl = noise.new_zeros(noise.shape[1])
    for j in reversed(range(sched.n_steps)):
        mu = step_mean(f, x, j, sched)
        if f_ref is not None:
            kl = kl + _step_kl(mu, step_mean(f_ref, x, j, sched), sched.sigma[j])
        x = mu + sched.sigma[j].to(x) * noise[j]
    r = _reward(reward_fn, x)
    loss = -(r - kl_weight * kl).mean()
    return loss, {"reward": r.detach().mean().item(), "kl": kl.detach().mean().item()}


def unrolled_init(model: nn.Module, cfg: FinetuneConfig,
                  optimizer: OptimizerFactory | None = None) -> UnrolledState:
    """The optimizer over ``model``'s trainable parameters (as in :func:`finetune_init`), a
    frozen copy of its parameters and the noise rng (on the model's device)."""
    ref = _frozen_copy(model)
    params = _trainable(model)
    opt = make_optimizer(params.values(), cfg.optimizer, cfg.lr, optimizer)
    device = next(iter(params.values())).device
    return UnrolledState(opt, ref, torch.Generator(device=device).manual_seed(cfg.seed))


def unrolled_step(state: UnrolledState, model: nn.Module, sched: SamplerSchedule,
                  reward_fn: RewardFn, cfg: FinetuneConfig,
                  dim: int = 64) -> tuple[UnrolledState, dict[str, float]]:
    """One theta step of the baseline: T sequential steps with graph, then backward, then
    one optimizer step on ``model`` (in place). ``info``: ``reward``, ``kl``, ``grad_norm``."""
    check_int(dim, "dim", 1)
    params = _optimized(model, state.optimizer)
    p0 = next(iter(params.values()))
    noise = draw_noise(sched, cfg.pop_size, dim, state.generator, p0.dtype, device=p0.device)
    loss, info = unrolled_loss(model, params, state.ref_params, noise, sched, reward_fn,
                               cfg.kl_weight)
    g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    grads = {k: torch.zeros_like(p) if gi is None else gi
             for (k, p), gi in zip(params.items(), g)}
    info["grad_norm"] = _apply(state.optimizer, params, grads)
    return dataclasses.replace(state, iteration=state.iteration + 1), info
