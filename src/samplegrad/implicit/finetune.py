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
* ``FinetuneConfig(path_memory="recompute")``: the same ``finetune_init`` / ``finetune_step``
  without the queue: each step draws fresh noise, samples one path with the current
  ``theta`` under ``no_grad`` and runs the adjoint along it. Memory: one path
  ``(T + 1) N d`` during the step instead of the queue's ``T (T + 1) N d``; the gradient is
  the unrolled baseline's on the same noise (no stale paths); cost: ``T`` sequential
  network calls of ``N`` rows instead of one batched call of ``T N`` rows.
* Baseline (``unrolled_init`` / ``unrolled_step``): fresh noise, the full T-step sampler
  with autograd, backward through the unrolled graph.

The user's noise model ``eps = model(x, t)`` (any ``nn.Module``; ``x`` ``(N, *shape)`` of
any event shape, e.g. ``(N, d)`` vectors or ``(N, C, H, W)`` images; ``t`` ``(N,)`` long;
``eps`` shaped like ``x``) is trained IN PLACE by a ``torch.optim`` optimizer
(``FinetuneConfig.optimizer`` + ``lr``, or an ``optimizer=`` factory given to the ``*_init``
function). The trainable parameters are the model's own with ``requires_grad`` or the subset
passed as ``params=`` (the rest stay frozen). The state keeps a frozen, detached copy of the
trainable parameters' initial values as the KL reference (evaluated through
``torch.func.functional_call``; frozen parameters are shared). Usage::

    sched = sampling_schedule(linear_alpha_bars(1000), n_steps=20)
    cfg = FinetuneConfig(pop_size=16, lr=1e-4, kl_weight=0.1)
    state = finetune_init(model, sched, cfg, shape=(1, 28, 28))
    for _ in range(100):
        state, info = finetune_step(state, model, sched, reward_fn, cfg)

The lower-level functions (``adjoint_grad``, ``path_kl``, ``unrolled_loss``) take parameter
dicts ``{name: tensor}`` used through ``functional_call`` on ``model``. Paths, noise and the
generator live on the device and in the dtype of the trainable parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from samplegrad import distributed as _dist
from samplegrad._config import check_choice, check_int, check_real
from samplegrad._optim import OptimizerFactory, check_lr, check_optimizer_name, make_optimizer
from samplegrad._params import optimized as _optimized
from samplegrad._params import trainable as _trainable
from samplegrad._validation import validation_enabled
from samplegrad.diffusion._checks import check_finite, event_shape, is_oom, shape_str
from samplegrad.diffusion.ddpm import draw_noise, step_mean
from samplegrad.diffusion.schedules import SamplerSchedule

Params = dict[str, Tensor]
RewardFn = Callable[[Tensor], Tensor]
"""``R(x_0 (N, *shape)) -> (N,)``, differentiable in ``x_0`` (its gradient starts the
adjoint)."""

PATH_MEMORY = ("full", "recompute")
"""The values of :attr:`FinetuneConfig.path_memory`."""

__all__ = [
    "PATH_MEMORY", "FinetuneConfig", "FinetuneState", "UnrolledState", "adjoint_grad",
    "adjoint_step", "advance", "finetune_init", "finetune_step", "load_queue_state_dict", "path_kl",
    "queue_state_dict", "unrolled_init", "unrolled_loss", "unrolled_step",
]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings shared by the queue (implicit) and the unrolled baseline.

    ``path_memory`` (:func:`finetune_init` / :func:`finetune_step` only): ``"full"`` keeps
    the queue of ``T`` populations with their paths (``T (T + 1) N d`` floats, stale paths);
    ``"recompute"`` keeps no queue and samples one fresh path per step under the current
    ``theta`` (``(T + 1) N d`` floats during the step, the unrolled gradient, ``T``
    sequential no-grad network calls instead of one batched call); see
    docs/methods.md#path-memory.
    """

    pop_size: int = 32  # samples per population (= batch of one theta step)
    lr: float = 3e-4  # learning rate of the optimizer
    optimizer: str = "Adam"  # a torch.optim class name (or pass optimizer= to the init)
    kl_weight: float = 0.1  # lambda in front of the path KL (0 disables it)
    seed: int = 0  # seed of the sampler noise
    # what finetune_init / finetune_step keep of the paths between theta steps:
    # "full": the queue, T populations with their whole paths, T (T + 1) N d floats (the
    #   paper's algorithm; the adjoint runs along a path produced under the last T thetas);
    # "recompute": no queue; every theta step draws fresh noise, samples ONE path with the
    #   current theta (T no-grad calls) and runs the adjoint along it: (T + 1) N d floats,
    #   alive during the step only, and the gradient of the unrolled baseline (no staleness).
    #   See docs/methods.md#path-memory.
    path_memory: str = "full"

    def __post_init__(self) -> None:
        check_int(self.pop_size, "pop_size", 1)
        check_lr(self.lr)
        check_optimizer_name(self.optimizer)
        check_real(self.kl_weight, "kl_weight", ge=0)
        check_int(self.seed, "seed")
        check_choice(self.path_memory, "path_memory", PATH_MEMORY)


# ---------------------------------------------------------------- argument checks
def _check_sched(sched: SamplerSchedule) -> SamplerSchedule:
    if not isinstance(sched, SamplerSchedule):
        raise TypeError(f"sched: must be a SamplerSchedule (see sampling_schedule), got "
                        f"{type(sched).__name__}")
    if sched.n_steps < 1:
        raise ValueError(f"sched: the schedule must have T >= 1 steps, got {sched.n_steps}")
    return sched


def _check_cfg(cfg: FinetuneConfig) -> FinetuneConfig:
    if not isinstance(cfg, FinetuneConfig):
        raise TypeError(f"cfg: must be a FinetuneConfig, got {type(cfg).__name__}")
    return cfg


def _check_reward_fn(reward_fn: RewardFn) -> RewardFn:
    if not callable(reward_fn):
        raise TypeError(f"reward_fn: must be callable (x_0 (N, *shape) -> (N,)), got "
                        f"{type(reward_fn).__name__}")
    return reward_fn


# ---------------------------------------------------------------- model helpers
def _eps_fn(model: nn.Module, params: Params) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, t: torch.func.functional_call(model, params, (x, t))


def _frozen_copy(params: Params) -> Params:
    """Detached copies of the trainable parameters (the KL reference)."""
    return {k: p.detach().clone() for k, p in params.items()}


def _build_optimizer(params: Params, cfg: FinetuneConfig,
                     optimizer: OptimizerFactory | None) -> torch.optim.Optimizer:
    if optimizer is not None and not callable(optimizer):
        raise TypeError(f"optimizer: must be a factory params -> torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    return make_optimizer(params.values(), cfg.optimizer, cfg.lr, optimizer)


def _apply(optimizer: torch.optim.Optimizer, params: Params, grads: Params) -> float:
    """One optimizer step with the given loss gradients; returns their global norm."""
    optimizer.zero_grad(set_to_none=True)
    for k, p in params.items():
        p.grad = grads[k].detach().to(p.dtype)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                 for g in grads.values()]))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    dev = next(iter(params.values())).device  # one host sync for all parameters
    if validation_enabled() and not bool(torch.stack([torch.isfinite(p).all().to(dev)
                                                      for p in params.values()]).all()):
        raise ValueError("optimizer: its step made the model's parameters non-finite (NaN or "
                         "inf); lower the learning rate or check the optimizer's settings")
    return float(norm)


def _schedule_on(sched: SamplerSchedule, device: torch.device) -> SamplerSchedule:
    return sched if sched.timesteps.device == device else sched.to(device=device)


def _probe(model: nn.Module, shape: tuple[int, ...], sched: SamplerSchedule | None,
           dtype: torch.dtype, device: torch.device) -> None:
    """One tiny no-grad call of the model on zeros of the event ``shape``: a model that
    takes another shape fails here, with the argument named, not deep inside a step."""
    x = torch.zeros(2, *shape, dtype=dtype, device=device)
    t = (torch.zeros(2, dtype=torch.long, device=device) if sched is None
         else sched.timesteps[:1].to(device).expand(2))
    modes = {m: m.training for m in model.modules()}
    model.eval()  # no side effects (batch-norm statistics, dropout rng) from the probe
    try:
        with torch.no_grad():
            eps = model(x, t)
    except TypeError as e:
        raise TypeError(f"model: calling model(x, t) failed (a noise model takes samples x "
                        f"(N, *shape) and long timesteps t (N,)): {e}") from e
    except (RuntimeError, ValueError, IndexError) as e:
        if is_oom(e):
            raise
        reason = str(e).rstrip(".")
        raise ValueError(f"shape: the model failed on samples of event shape {shape} (x of "
                         f"shape {tuple(x.shape)}, t {tuple(t.shape)} long): "
                         f"{type(e).__name__}: {reason}. Give the shape of one sample your "
                         "model takes, e.g. shape=(1, 28, 28) for (N, 1, 28, 28) images") from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    if not isinstance(eps, Tensor) or eps.shape != x.shape:
        raise ValueError(f"model: a noise model must return eps shaped like its input x "
                         f"{tuple(x.shape)}, got {shape_str(eps)}")


def _check_path(path: Tensor, sched: SamplerSchedule, name: str = "path") -> None:
    if not isinstance(path, Tensor) or path.dim() < 3 or path.shape[0] != sched.n_steps + 1:
        raise ValueError(f"{name}: must be shaped (T + 1, N, *shape) with T = "
                         f"{sched.n_steps}, got {shape_str(path)}")


def _reward(reward_fn: RewardFn, x0: Tensor) -> Tensor:
    r = reward_fn(x0)
    if not isinstance(r, Tensor) or r.shape != x0.shape[:1]:
        raise ValueError(f"reward_fn: must map x_0 {tuple(x0.shape)} to one value per sample "
                         f"({x0.shape[0]},), got {shape_str(r)}")
    if x0.requires_grad and not r.requires_grad:
        raise ValueError("reward_fn: its output does not depend differentiably on x_0 (the "
                         "gradients need grad R(x_0); do not detach or use no_grad inside)")
    check_finite(r, "reward_fn", "returned non-finite values (NaN or inf)")
    return r


def _step_kl(mu: Tensor, mu_ref: Tensor, sigma: Tensor) -> Tensor:
    """``||mu - mu_ref||^2 / (2 sigma^2)`` per row: ``(N, *shape) -> (N,)``."""
    return (mu - mu_ref).pow(2).flatten(1).sum(-1) / (2.0 * sigma.to(mu) ** 2)


def path_kl(model: nn.Module, params: Params, ref_params: Params, path: Tensor,
            sched: SamplerSchedule) -> Tensor:
    """Per-sample path KL integrand ``sum_j k_j`` along ``path`` ``(T+1, N, *shape)``: ``(N,)``.

    Its mean over paths drawn with ``params`` estimates ``KL(path_theta || path_ref)``.
    """
    _check_path(path, _check_sched(sched))
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
    """One backward step of the adjoint at state ``x = x_{j+1}`` ``(N, *shape)``.

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
    gx = torch.zeros_like(x) if grads[0] is None else grads[0]
    gp = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(plist, grads[1:]))
    return gx, gp, k.detach()


def adjoint_grad(model: nn.Module, params: Params, ref_params: Params | None, path: Tensor,
                 sched: SamplerSchedule, reward_fn: RewardFn,
                 kl_weight: float = 0.0, *,
                 n_total: int | None = None) -> tuple[Params, dict[str, float]]:
    """Gradient of ``loss = -mean_n [R(x_0) - kl_weight * sum_j k_j]`` along ``path``.

    ``path`` ``(T+1, N, *shape)`` with ``path[j] = x_j`` (noise held fixed: only the states
    are needed). Every step is recomputed with ``params``. Returns ``(grads, info)`` with
    ``info = {"reward": mean R(x_0), "kl": mean sum_j k_j}``. ``n_total``: the size of the
    whole population when ``path`` holds one rank's shard of it (the mean is then over
    ``n_total`` samples, so the ranks' gradients sum to the whole population's).
    """
    _check_path(path, _check_sched(sched))
    _check_reward_fn(reward_fn)
    check_real(kl_weight, "kl_weight", ge=0)
    if kl_weight > 0 and ref_params is None:
        raise ValueError("ref_params: is required when kl_weight > 0")
    check_finite(path, "path")
    sched = _schedule_on(sched, path.device)
    n = path.shape[1] if n_total is None else int(n_total)
    x0 = path[0].detach().requires_grad_(True)
    with torch.enable_grad():
        r = _reward(reward_fn, x0)
        (a,) = torch.autograd.grad(r.sum() / n, x0)
    acc = [torch.zeros_like(p) for p in params.values()]
    kl = path.new_zeros(path.shape[1])
    for j in range(sched.n_steps):
        a, gp, k = adjoint_step(model, params, ref_params, path[j + 1], j, a, sched,
                                kl_weight / n)
        for buf, g in zip(acc, gp):
            buf.add_(g)
        kl += k
    grads = {name: -g for name, g in zip(params, acc)}  # ascent on J -> descent on loss
    return grads, {"reward": r.detach().mean().item(), "kl": kl.mean().item()}


def _global_means(info: dict[str, float], n_local: int, n_total: int) -> dict[str, float]:
    """Per-rank means of ``n_local`` samples -> means over all ``n_total`` (one collective)."""
    keys = sorted(info)
    v = torch.tensor([info[k] * n_local for k in keys], dtype=torch.float64,
                     device=torch.device("cpu"))
    if _dist.world().backend == "nccl":
        v = v.to(_dist.world().device)
    _dist.all_reduce(v)
    return {k: float(x) / n_total for k, x in zip(keys, v.tolist())}


# ---------------------------------------------------------------- queue (implicit)
@dataclass
class FinetuneState:
    """Explicit state of the queue. ``paths[p, j]`` is ``x_j`` of population ``p``;
    ``stage[p]`` the steps it has done (its current state is ``paths[p, T - stage[p]]``).
    With ``path_memory="recompute"`` there is no queue: ``paths`` is ``(0, T + 1, N,
    *shape)`` and ``stage`` ``(0,)`` (they only record T, N and the event shape).
    The model's own parameters are the ones being trained (not held here)."""

    optimizer: torch.optim.Optimizer  # updates the model's parameters in place
    ref_params: Params  # frozen copy of the trainable parameters' initial values
    paths: Tensor  # (T, T + 1, N, *shape)
    stage: Tensor  # (T,) long
    generator: torch.Generator  # the sampler noise, on the model's device
    iteration: int = 0
    pop_size: int | None = None  # N of the whole population (None: all held here)
    shard: slice | None = None  # this rank's samples of every population (data parallel)

    @property
    def shape(self) -> tuple[int, ...]:
        """The event shape of one sample."""
        return tuple(self.paths.shape[3:])


def _global_randn(shape: tuple[int, ...], generator: torch.Generator, like: Tensor,
                  pop_size: int | None, shard: slice | None, dim: int) -> Tensor:
    """Gaussian noise drawn for the whole population (size ``pop_size`` along ``dim``) and
    cut to ``shard``: the same numbers per sample whatever the number of ranks."""
    if shard is None:
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    full = list(shape)
    full[dim] = pop_size
    return torch.randn(full, generator=generator, dtype=like.dtype,
                       device=like.device).narrow(dim, shard.start, shard.stop - shard.start)


def advance(model: nn.Module, paths: Tensor, stage: Tensor, slots: Tensor,
            sched: SamplerSchedule, generator: torch.Generator, *,
            pop_size: int | None = None, shard: slice | None = None) -> None:
    """Advance populations ``slots`` by one sampler step each, in ONE call of ``model``.

    Writes the new states into ``paths`` ``(T, T + 1, N, *shape)`` and increments ``stage``
    ``(T,)`` in place. With ``shard`` (data parallel) ``paths`` holds samples ``shard`` of
    populations of ``pop_size``; the noise is drawn for all ``pop_size`` and cut.
    """
    t_total = sched.n_steps
    if slots.numel() == 0:
        return
    if validation_enabled() and bool((stage[slots] >= t_total).any()):
        raise ValueError("slots: cannot advance a finished population")
    sched = _schedule_on(sched, paths.device)
    n, shape = paths.shape[2], paths.shape[3:]
    j = t_total - stage[slots] - 1  # step index of each population
    cur = paths[slots, j + 1]  # (S, N, *shape)
    noise = _global_randn(tuple(cur.shape), generator, paths, pop_size, shard, 1)
    rows = j.repeat_interleave(n)
    with torch.no_grad():
        mu = step_mean(model, cur.reshape(-1, *shape), rows, sched)
        sigma = sched.sigma.to(paths.dtype)[j].reshape(-1, *([1] * (cur.dim() - 1)))
        x = mu.reshape(cur.shape) + sigma * noise
    paths[slots, j] = x
    stage[slots] += 1


def finetune_init(model: nn.Module, sched: SamplerSchedule, cfg: FinetuneConfig,
                  shape: int | tuple[int, ...], *, params: Iterable[Tensor] | None = None,
                  optimizer: OptimizerFactory | None = None) -> FinetuneState:
    """Fill the queue with the model as it is: population ``p`` has done ``p`` steps.

    ``shape``: the event shape of one sample (``d`` or ``(d,)`` for vectors, ``(C, H, W)`` for
    images): the model is called on ``x`` ``(N, *shape)``. Trains ``params`` (a subset of the
    model's parameters; default: all with ``requires_grad``), with ``optimizer(params)`` when
    that factory is given, else ``torch.optim.<cfg.optimizer>(params, lr=cfg.lr)``; keeps a
    frozen copy of them as the KL reference. Costs ``T - 1`` batched network calls (the
    warm-up); afterwards every :func:`finetune_step` emits one finished population. Paths and
    noise live on the device and in the dtype of the first trainable parameter. With
    ``cfg.path_memory="recompute"`` no queue is built (no warm-up, no stored paths).

    Under ``torch.distributed`` (:func:`samplegrad.distributed.init_from_env`) each rank
    holds its :func:`~samplegrad.distributed.shard` of every population (``pop_size /
    world_size`` samples), the noise is drawn for the whole population from the shared seed
    and cut, and :func:`finetune_step` sums the adjoint gradients over ranks: the same
    iterates as one process, up to the order of floating-point additions.
    """
    _check_sched(sched)
    _check_cfg(cfg)
    shape = event_shape(shape)
    t_total = sched.n_steps
    trainable = _trainable(model, params)
    ref = _frozen_copy(trainable)
    opt = _build_optimizer(trainable, cfg, optimizer)
    p0 = next(iter(trainable.values()))
    dtype, device = p0.dtype, p0.device
    sched = _schedule_on(sched, device)
    _probe(model, shape, sched, dtype, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    sl = _dist.shard(cfg.pop_size) if _dist.world().distributed else None
    n = cfg.pop_size if sl is None else sl.stop - sl.start
    if cfg.path_memory == "recompute":  # no queue: nothing is kept between theta steps
        empty = torch.zeros(0, t_total + 1, n, *shape, dtype=dtype, device=device)
        return FinetuneState(opt, ref, empty, torch.zeros(0, dtype=torch.long, device=device),
                             gen, pop_size=cfg.pop_size, shard=sl)
    paths = torch.zeros(t_total, t_total + 1, n, *shape, dtype=dtype, device=device)
    paths[:, t_total] = _global_randn((t_total, n, *shape), gen, paths, cfg.pop_size, sl, 1)
    stage = torch.zeros(t_total, dtype=torch.long, device=device)
    slots = torch.arange(t_total, device=device)
    for i in range(t_total - 1):
        advance(model, paths, stage, slots[i + 1:], sched, gen, pop_size=cfg.pop_size,
                shard=sl)
    return FinetuneState(opt, ref, paths, stage, gen, pop_size=cfg.pop_size, shard=sl)


def finetune_step(state: FinetuneState, model: nn.Module, sched: SamplerSchedule,
                  reward_fn: RewardFn, cfg: FinetuneConfig
                  ) -> tuple[FinetuneState, dict[str, float]]:
    """One iteration: advance all T populations (one batched call), adjoint gradient of the
    finished one, one optimizer step on ``model`` (in place), restart it from fresh noise.

    The ``paths``/``stage`` buffers are updated in place (they are large). ``info``:
    ``reward`` (mean R of the finished population), ``kl`` (its mean path KL to the
    reference), ``grad_norm`` and ``finished_slot``. With ``cfg.path_memory="recompute"``
    (the state must have been built with it): fresh noise, one path sampled with the current
    ``theta``, its adjoint gradient and one optimizer step; ``info`` has no
    ``finished_slot``.
    """
    if not isinstance(state, FinetuneState):
        raise TypeError(f"state: must be a FinetuneState from finetune_init, got "
                        f"{type(state).__name__}")
    _check_sched(sched)
    _check_cfg(cfg)
    _check_reward_fn(reward_fn)
    t_total = sched.n_steps
    if state.paths.shape[1] != t_total + 1:
        raise ValueError(f"sched: state was built for T = {state.paths.shape[1] - 1}, schedule "
                         f"has T = {t_total}")
    if _memory_of(state) != cfg.path_memory:
        raise ValueError(f"path_memory: state was built with path_memory="
                         f"{_memory_of(state)!r}, cfg has {cfg.path_memory!r}")
    params = _optimized(model, state.optimizer)
    sched = _schedule_on(sched, state.paths.device)
    if cfg.path_memory == "recompute":
        return _recompute_step(state, model, params, sched, reward_fn, cfg)
    stage0, rng0 = state.stage.clone(), state.generator.get_state()
    try:
        advance(model, state.paths, state.stage,
                torch.arange(t_total, device=state.stage.device), sched, state.generator,
                pop_size=state.pop_size, shard=state.shard)
        done = (state.stage == t_total).nonzero().flatten()
        if done.numel() != 1:
            raise ValueError(f"state: corrupt queue, {done.numel()} populations finished at "
                             "once")
        p = int(done[0])
        grads, info = adjoint_grad(model, params, state.ref_params, state.paths[p], sched,
                                   reward_fn, cfg.kl_weight,
                                   n_total=state.pop_size if state.shard else None)
    except BaseException:  # e.g. a bad reward: the queue is left as it was (retry possible)
        state.stage.copy_(stage0)
        state.generator.set_state(rng0)
        raise
    if state.shard is not None:  # data parallel: sum the ranks' shares of the gradient
        flat = torch.cat([g.reshape(-1) for g in grads.values()])
        _dist.all_reduce(flat)
        grads = dict(zip(grads, flat.split([g.numel() for g in grads.values()])))
        grads = {k: g.view_as(params[k]) for k, g in grads.items()}
        info = _global_means(info, state.paths.shape[2], state.pop_size)
    info["grad_norm"] = _apply(state.optimizer, params, grads)
    state.paths[p, t_total] = _global_randn(tuple(state.paths.shape[2:]), state.generator,
                                            state.paths, state.pop_size, state.shard, 0)
    state.stage[p] = 0
    info["finished_slot"] = p
    return dataclasses.replace(state, iteration=state.iteration + 1), info


def _memory_of(state: FinetuneState) -> str:
    """The ``path_memory`` a state was built with (``recompute`` keeps no populations)."""
    return "recompute" if state.paths.shape[0] == 0 else "full"


def _sample_path_(model: nn.Module, noise: Tensor, sched: SamplerSchedule) -> Tensor:
    """The ancestral path on ``noise`` ``(T+1, N, *shape)`` without graph, written IN PLACE
    into ``noise`` (``noise[j]`` becomes ``x_j`` once it is used): one path's memory."""
    with torch.no_grad():
        for j in reversed(range(sched.n_steps)):
            noise[j] = step_mean(model, noise[j + 1], j, sched) + \
                sched.sigma[j].to(noise.dtype) * noise[j]
    return noise


def _recompute_step(state: FinetuneState, model: nn.Module, params: Params,
                    sched: SamplerSchedule, reward_fn: RewardFn, cfg: FinetuneConfig
                    ) -> tuple[FinetuneState, dict[str, float]]:
    """``path_memory="recompute"``: fresh noise (the draw of :func:`unrolled_step`), one
    no-grad path with the current ``theta``, the adjoint along it, one optimizer step."""
    t_total = sched.n_steps
    n_local, shape = state.paths.shape[2], tuple(state.paths.shape[3:])
    rng0 = state.generator.get_state()
    try:
        noise = _global_randn((t_total + 1, n_local, *shape), state.generator, state.paths,
                              state.pop_size, state.shard, 1)
        path = _sample_path_(model, noise, sched)
        grads, info = adjoint_grad(model, params, state.ref_params, path, sched, reward_fn,
                                   cfg.kl_weight,
                                   n_total=state.pop_size if state.shard else None)
    except BaseException:  # e.g. a bad reward: the state is left as it was (retry possible)
        state.generator.set_state(rng0)
        raise
    del path, noise
    if state.shard is not None:  # data parallel: sum the ranks' shares of the gradient
        flat = torch.cat([g.reshape(-1) for g in grads.values()])
        _dist.all_reduce(flat)
        grads = {k: g.view_as(params[k])
                 for k, g in zip(grads, flat.split([g.numel() for g in grads.values()]))}
        info = _global_means(info, n_local, state.pop_size)
    info["grad_norm"] = _apply(state.optimizer, params, grads)
    return dataclasses.replace(state, iteration=state.iteration + 1), info


def queue_state_dict(state: FinetuneState) -> dict:
    """The whole queue as plain tensors (``paths`` of every rank gathered to the full
    population, ``stage``, the generator's state, the optimizer's state, the KL reference
    and ``iteration``): what rank 0 checkpoints. A collective under ``torch.distributed``:
    every rank must call it."""
    if state.shard is None:
        paths = state.paths
    elif state.paths.shape[0] == 0:  # path_memory="recompute": no populations to gather
        paths = state.paths.new_zeros(0, state.paths.shape[1], state.pop_size,
                                      *state.paths.shape[3:])
    else:
        paths = _dist.gather(state.paths, dim=2)
    return {"paths": paths.detach().cpu(), "stage": state.stage.cpu(),
            "generator": state.generator.get_state(),
            "optimizer": state.optimizer.state_dict(),
            "ref_params": {k: v.cpu() for k, v in state.ref_params.items()},
            "iteration": state.iteration}


def load_queue_state_dict(state: FinetuneState, blob: dict) -> FinetuneState:
    """Restore a :func:`queue_state_dict` into ``state`` (built by :func:`finetune_init` for
    the same model, schedule and config), keeping this rank's shard of every population: a
    queue saved on any number of ranks resumes on any other. Restore the model's parameters
    separately (``model.load_state_dict``)."""
    full = blob["paths"]
    saved = "recompute" if full.shape[0] == 0 else "full"
    if saved != _memory_of(state):
        raise ValueError(f"blob: the saved queue was built with path_memory={saved!r}, this "
                         f"state with path_memory={_memory_of(state)!r}")
    if full.shape[:2] != state.paths.shape[:2] or full.shape[3:] != state.paths.shape[3:]:
        raise ValueError(f"blob: the saved queue has paths {tuple(full.shape)}, this state "
                         f"{tuple(state.paths.shape)} (different schedule or event shape)")
    n = state.pop_size if state.pop_size is not None else state.paths.shape[2]
    if full.shape[2] != n:
        raise ValueError(f"blob: saved population size {full.shape[2]}, this config {n}")
    local = full if state.shard is None else full[:, :, state.shard]
    state.paths.copy_(local.to(state.paths.device))
    state.stage.copy_(blob["stage"].to(state.stage.device))
    state.generator.set_state(blob["generator"])
    state.optimizer.load_state_dict(blob["optimizer"])
    for k, v in blob["ref_params"].items():
        state.ref_params[k].copy_(v.to(state.ref_params[k].device))
    return dataclasses.replace(state, iteration=int(blob["iteration"]))


# ---------------------------------------------------------------- unrolled baseline
@dataclass
class UnrolledState:
    """State of the unrolled baseline: the optimizer (over the model's trainable
    parameters), their frozen KL reference, the noise rng and the event shape."""

    optimizer: torch.optim.Optimizer
    ref_params: Params
    generator: torch.Generator
    shape: tuple[int, ...]
    iteration: int = 0


def unrolled_loss(model: nn.Module, params: Params, ref_params: Params | None, noise: Tensor,
                  sched: SamplerSchedule, reward_fn: RewardFn,
                  kl_weight: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """The same loss as ``adjoint_grad``, on a fresh path from ``noise`` ``(T+1, N, *shape)``,
    with autograd through the whole unrolled sampler (the graph of all T steps is kept)."""
    _check_path(noise, _check_sched(sched), "noise")
    _check_reward_fn(reward_fn)
    check_real(kl_weight, "kl_weight", ge=0)
    if kl_weight > 0 and ref_params is None:
        raise ValueError("ref_params: is required when kl_weight > 0")
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


def unrolled_init(model: nn.Module, cfg: FinetuneConfig, shape: int | tuple[int, ...], *,
                  params: Iterable[Tensor] | None = None,
                  optimizer: OptimizerFactory | None = None) -> UnrolledState:
    """The optimizer over ``params`` (default: the model's trainable parameters, as in
    :func:`finetune_init`), a frozen copy of them, the noise rng (on their device) and the
    event ``shape`` of one sample."""
    _check_cfg(cfg)
    shape = event_shape(shape)
    trainable = _trainable(model, params)
    ref = _frozen_copy(trainable)
    opt = _build_optimizer(trainable, cfg, optimizer)
    p0 = next(iter(trainable.values()))
    _probe(model, shape, None, p0.dtype, p0.device)
    return UnrolledState(opt, ref, torch.Generator(device=p0.device).manual_seed(cfg.seed),
                         shape)


def unrolled_step(state: UnrolledState, model: nn.Module, sched: SamplerSchedule,
                  reward_fn: RewardFn, cfg: FinetuneConfig
                  ) -> tuple[UnrolledState, dict[str, float]]:
    """One theta step of the baseline: T sequential steps with graph, then backward, then
    one optimizer step on ``model`` (in place). ``info``: ``reward``, ``kl``, ``grad_norm``.
    Under ``torch.distributed`` each rank runs its shard of the population (noise drawn for
    all of it) and the gradients are summed over ranks."""
    if not isinstance(state, UnrolledState):
        raise TypeError(f"state: must be an UnrolledState from unrolled_init, got "
                        f"{type(state).__name__}")
    _check_sched(sched)
    _check_cfg(cfg)
    params = _optimized(model, state.optimizer)
    p0 = next(iter(params.values()))
    noise = draw_noise(sched, cfg.pop_size, state.shape, state.generator, p0.dtype,
                       device=p0.device)
    sl = _dist.shard(cfg.pop_size) if _dist.world().distributed else None
    if sl is not None:  # data parallel: the whole population's noise, this rank's samples
        noise = noise[:, sl]
    loss, info = unrolled_loss(model, params, state.ref_params, noise, sched, reward_fn,
                               cfg.kl_weight)
    if sl is not None:  # this rank's share of the population mean
        loss = loss * (noise.shape[1] / cfg.pop_size)
    g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    grads = {k: torch.zeros_like(p) if gi is None else gi
             for (k, p), gi in zip(params.items(), g)}
    if sl is not None:
        flat = _dist.all_reduce(torch.cat([gi.reshape(-1) for gi in grads.values()]))
        grads = {k: gi.view_as(params[k])
                 for k, gi in zip(grads, flat.split([p.numel() for p in params.values()]))}
        info = _global_means(info, noise.shape[1], cfg.pop_size)
    info["grad_norm"] = _apply(state.optimizer, params, grads)
    return dataclasses.replace(state, iteration=state.iteration + 1), info
