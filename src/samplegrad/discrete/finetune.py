"""Reward finetuning of a masked diffusion model's weights through its unmasking sampler
(docs/methods.md#mdm-finetuning).

Objective over the denoiser's parameters ``theta`` (minimized):

    loss(theta) = -E[ R(x_T) ] + kl_weight * KL(path_theta || path_ref),

the expectation over paths of the T-step unmasking sampler of
:func:`samplegrad.discrete.sample` (linear schedule): step ``k`` maps the state ``x_k`` to
``x_{k+1}`` (``x_0`` all [MASK], or ``given`` tokens clamped; ``x_T`` clean), revealing each
masked position with probability ``p_k`` and drawing its token from the model's categorical.
Which positions are revealed does not depend on ``theta``, so the path KL is, in closed form
per step, ``E[sum_k kl_k]`` with ``kl_k = p_k * sum_{i masked in x_k} KL(Cat_theta(x_k)_i ||
Cat_ref(x_k)_i)`` (the per-position KL of the two unmasking policies, averaged over whether
the position is revealed now).

States are float tensors ``(N, L, W)``: one-hot (or, for relaxed estimators, soft) rows over
the token ids ``0..W-1``, ``W = max(V, mask_id + 1)`` (our convention: ``V`` real tokens and
the mask id ``V``, so ``W = V + 1``). **Model contract**: ``model(x)`` must accept such float
tokens ``(N, L, W)`` (as well as integer ids, used once to check it) and return logits
``(N, L, V)``; :class:`~samplegrad.discrete.Denoiser` applies its embedding as a matmul
there. For your own model, e.g. ``lambda x: lm(inputs_embeds=x @ lm.get_input_embeddings()
.weight).logits`` when ``x`` is float. Rewards ``R(x_T)`` take the clean one-hot / soft
tokens ``(N, L, V)`` and return ``(N,)``.

Starts: all [MASK], or ``given=`` tokens clamped in every path (e.g. a puzzle's clues), or
``pool=`` ``(M, L)`` starting tokens from which every theta step (the queue: every restart of
a population) draws its ``pop_size`` starts, so that a model learns to infill many prompts.

Methods (all ``*_init`` / ``*_step`` pairs, training the model IN PLACE with a
``torch.optim`` optimizer over its trainable parameters; a frozen copy of their initial
values is the KL reference):

* ``unrolled_init`` / ``unrolled_step``: pathwise. Every categorical draw is reparameterized
  by the pathwise estimator ``cfg.estimator`` (:func:`samplegrad.sampler`: ``redge`` and its
  variants, ``straight_through``, ``gumbel_soft`` / ``gumbel_hard``, ``reinmax``, ...), the
  one-hot (or soft) draw carrying its gradient is written into the state and fed to the next
  model call, and autograd runs through all T steps (``cfg.truncate = K``: only through the
  last K; the first T - K run without a graph and contribute no gradient).
* ``finetune_init`` / ``finetune_step``: the Implicit Diffusion queue (as in
  :mod:`samplegrad.implicit.finetune`): T populations at the T stages of the sampler; each
  iteration advances all of them by one step with the current ``theta`` in ONE batched model
  call, takes the finished population's gradient (the adjoint of the pathwise gradient,
  :func:`adjoint_grad`, one step's graph at a time, every step re-evaluated with the current
  ``theta`` at the stored states and with the same estimator noise), makes one optimizer step
  and restarts that population.
* ``reinforce_init`` / ``reinforce_step``: the policy-gradient baseline (DDPO-style):
  REINFORCE over the per-step log-probabilities of the sampled tokens, with a leave-one-out
  baseline over the population, plus the direct gradient of the per-step KL.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from samplegrad._config import check_choice, check_int, check_real
from samplegrad._optim import OptimizerFactory, check_lr, check_optimizer_name, make_optimizer
from samplegrad._params import check_model as _check_model
from samplegrad._params import optimized as _optimized
from samplegrad._params import trainable as _trainable
from samplegrad._validation import check_finite, validation_enabled
from samplegrad.categorical.registry import get_method, methods, sampler
from samplegrad.diffusion._checks import is_oom, shape_str
from samplegrad.discrete.model import check_tokens

Params = dict[str, Tensor]
RewardFn = Callable[[Tensor], Tensor]
"""``R(x (N, L, V) one-hot or soft) -> (N,)``; differentiable in ``x`` for the pathwise
methods (REINFORCE needs its values only)."""
Draw = Callable[[Tensor, int], Tensor]
"""``draw(logits (N, L, V), k) -> (N, L, V)``: the token draw of step ``k``, one-hot (or
soft) valued, carrying the estimator's gradient with respect to ``logits``."""

__all__ = [
    "Draw", "MDMFinetuneConfig", "MDMFinetuneState", "MDMUnrolledState", "RewardFn",
    "adjoint_grad", "finetune_init", "finetune_step", "path_kl", "pathwise_draw",
    "reinforce_grad", "reinforce_init", "reinforce_step", "sample_path", "unrolled_init",
    "unrolled_loss", "unrolled_step",
]


def _pathwise_names() -> list[str]:
    return [m for m in methods() if get_method(m).kind == "pathwise"]


@dataclass(frozen=True)
class MDMFinetuneConfig:
    """Settings shared by the three methods (``estimator``, ``knobs`` and ``truncate`` are
    used by the pathwise ones only)."""

    n_steps: int = 16  # T unmasking steps of the sampler
    pop_size: int = 16  # sequences per theta step (REINFORCE: >= 2, the LOO baseline)
    estimator: str = "gumbel_soft"  # a pathwise estimator of the registry
    knobs: dict[str, Any] = field(default_factory=dict)  # its knobs, e.g. {"tau": 0.5}
    truncate: int | None = None  # K: gradients through the last K steps only (None: all)
    kl_weight: float = 0.1  # lambda in front of the path KL (0 disables it)
    lr: float = 1e-4
    optimizer: str = "Adam"  # a torch.optim class name (or pass optimizer= to the init)
    grad_clip: float = math.inf  # global gradient norm clip (inf: none)
    seed: int = 0  # seed of the sampler's random draws

    def __post_init__(self) -> None:
        check_int(self.n_steps, "n_steps", 1)
        check_int(self.pop_size, "pop_size", 1)
        check_choice(self.estimator, "estimator", _pathwise_names())
        if not isinstance(self.knobs, dict):
            raise ValueError(f"knobs: must be a dict of estimator settings, got "
                             f"{type(self.knobs).__name__}")
        known = get_method(self.estimator).defaults
        unknown = sorted(set(self.knobs) - set(known))
        if unknown:
            raise ValueError(f"knobs: {unknown[0]!r} is not a knob of {self.estimator!r}, which "
                             f"takes {sorted(known) or 'none'}")
        if self.truncate is not None:
            check_int(self.truncate, "truncate", 1)
            if self.truncate > self.n_steps:
                raise ValueError(f"truncate: must be <= n_steps ({self.n_steps}) or None, got "
                                 f"{self.truncate}")
        check_real(self.kl_weight, "kl_weight", ge=0)
        check_lr(self.lr)
        check_optimizer_name(self.optimizer)
        check_real(self.grad_clip, "grad_clip", gt=0, allow_inf=True)
        check_int(self.seed, "seed")


# ---------------------------------------------------------------- argument checks, model
def _check_cfg(cfg: MDMFinetuneConfig) -> MDMFinetuneConfig:
    if not isinstance(cfg, MDMFinetuneConfig):
        raise TypeError(f"cfg: must be an MDMFinetuneConfig, got {type(cfg).__name__}")
    return cfg


def _check_reward_fn(reward_fn: RewardFn) -> RewardFn:
    if not callable(reward_fn):
        raise TypeError(f"reward_fn: must be callable (x (N, L, V) -> (N,)), got "
                        f"{type(reward_fn).__name__}")
    return reward_fn


def _ids(model: Any, mask_id: int | None, vocab: int | None) -> tuple[int, int]:
    """``(mask_id, V)``, defaulting to ``model.config``'s (our Denoiser)."""
    cfg = getattr(model, "config", None)
    mask_id = getattr(cfg, "mask_id", None) if mask_id is None else mask_id
    vocab = getattr(cfg, "vocab_size", None) if vocab is None else vocab
    if mask_id is None or vocab is None:
        raise ValueError("mask_id: give mask_id= and vocab= (the number of logits V) for a "
                         "model without .config.mask_id / .config.vocab_size")
    return check_int(mask_id, "mask_id", 0), check_int(vocab, "vocab", 1)


def _width(mask_id: int, vocab: int) -> int:
    return max(vocab, mask_id + 1)


def _logits(model: nn.Module, params: Params, x: Tensor, mask_id: int, vocab: int) -> Tensor:
    """``model(x)`` with ``params`` (functional call), checked; a mask id inside the
    vocabulary gets logit -inf (never drawn)."""
    out = torch.func.functional_call(model, params, (x,))
    if not isinstance(out, Tensor) or out.shape != (*x.shape[:2], vocab) \
            or not out.is_floating_point():
        raise ValueError(f"model: must map float tokens {tuple(x.shape)} to logits "
                         f"{(*x.shape[:2], vocab)}, got {shape_str(out)}")
    if mask_id < vocab:
        col = torch.arange(vocab, device=out.device) == mask_id
        out = out.masked_fill(col, -math.inf)
    return out


def _kl(q_logits: Tensor, p_logits: Tensor, mask_id: int) -> Tensor:
    """``KL(Cat(q) || Cat(p))`` over the last axis, the mask id's column (if inside the
    vocabulary: -inf in both) left out so that gradients stay finite."""
    v = q_logits.shape[-1]
    if mask_id < v:
        keep = torch.tensor([i for i in range(v) if i != mask_id], device=q_logits.device)
        q_logits, p_logits = q_logits.index_select(-1, keep), p_logits.index_select(-1, keep)
    lq, lp = torch.log_softmax(q_logits, -1), torch.log_softmax(p_logits, -1)
    return (lq.exp() * (lq - lp)).sum(-1)


def _probe(model: nn.Module, seq_len: int, mask_id: int, vocab: int, dtype: torch.dtype,
           device: torch.device) -> None:
    """Check the model contract once: integer ids and float one-hot tokens give the same
    logits ``(2, L, V)``."""
    w = _width(mask_id, vocab)
    ids = torch.full((2, seq_len), mask_id, dtype=torch.long, device=device)
    ids[1, 0] = 0 if mask_id != 0 else 1
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            a = model(ids)
            b = model(nn.functional.one_hot(ids, w).to(dtype))
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        if is_oom(e):
            raise
        raise ValueError(f"model: must accept float one-hot tokens (N, {seq_len}, {w}) as well "
                         f"as integer ids (N, {seq_len}) (see the model contract of "
                         f"samplegrad.discrete.finetune): {type(e).__name__}: {e}") from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    for out in (a, b):
        if not isinstance(out, Tensor) or out.shape != (2, seq_len, vocab):
            raise ValueError(f"model: must return logits (N, {seq_len}, {vocab}) (vocab = "
                             f"{vocab}), got {shape_str(out)}")
    if not torch.allclose(a.to(b.dtype), b, rtol=1e-3, atol=1e-4):
        raise ValueError("model: its logits on float one-hot tokens differ from those on the "
                         "same integer ids; one-hot inputs must mean the same tokens")


def _start(given: Tensor | None, n: int, seq_len: int, mask_id: int, vocab: int,
           device: torch.device) -> Tensor:
    """Starting tokens ``(N, L)``: all [MASK], or ``given`` ``(L,)`` / ``(N, L)`` clamped."""
    if given is None:
        return torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    given = check_tokens(given, None, seq_len, name="given").to(device)
    if validation_enabled() and bool(((given >= vocab) & (given != mask_id)).any()):
        raise ValueError(f"given: has token ids outside 0..{vocab - 1} that are not the mask "
                         f"id {mask_id}")
    if given.ndim == 1:
        given = given.expand(n, -1)
    if given.shape != (n, seq_len):
        raise ValueError(f"given: must be shaped ({seq_len},) or ({n}, {seq_len}), got "
                         f"{tuple(given.shape)}")
    return given.clone()


def _check_pool(pool: Tensor | None, given: Tensor | None, seq_len: int, mask_id: int,
                vocab: int, device: torch.device) -> Tensor | None:
    """``pool`` ``(M, L)`` starting tokens (mask id = free) on ``device``, checked."""
    if pool is None:
        return None
    if given is not None:
        raise ValueError("pool: give either given= (fixed starts) or pool= (starts drawn "
                         "from it), not both")
    pool = check_tokens(pool, None, seq_len, name="pool").to(device)
    if pool.ndim != 2 or pool.shape[0] < 1:
        raise ValueError(f"pool: must be shaped (M, {seq_len}) with M >= 1, got "
                         f"{tuple(pool.shape)}")
    if validation_enabled() and bool(((pool >= vocab) & (pool != mask_id)).any()):
        raise ValueError(f"pool: has token ids outside 0..{vocab - 1} that are not the mask "
                         f"id {mask_id}")
    return pool


def _draw_starts(pool: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` rows of ``pool`` drawn uniformly with replacement: ``(n, L)``."""
    idx = torch.randint(pool.shape[0], (n,), generator=generator, device=generator.device)
    return pool[idx.to(pool.device)]


def _reward(reward_fn: RewardFn, x: Tensor, need_grad: bool) -> Tensor:
    r = reward_fn(x)
    if not isinstance(r, Tensor) or r.shape != x.shape[:1]:
        raise ValueError(f"reward_fn: must map x {tuple(x.shape)} to one value per sequence "
                         f"({x.shape[0]},), got {shape_str(r)}")
    if need_grad and x.requires_grad and not r.requires_grad:
        raise ValueError("reward_fn: its output does not depend differentiably on x (pathwise "
                         "gradients need grad R; do not detach or use no_grad inside)")
    check_finite(r, "reward_fn", "returned non-finite values (NaN or inf)")
    return r


def _reveal_prob(k: int, n_steps: int) -> float:
    """Probability that a masked position is revealed at step ``k`` (linear schedule)."""
    return 1.0 / (n_steps - k)


def _apply(optimizer: torch.optim.Optimizer, params: Params, grads: Params,
           clip: float) -> float:
    """One optimizer step with the given loss gradients (clipped to global norm ``clip``);
    returns their norm before clipping."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                 for g in grads.values()]))
    scale = (clip / (norm + 1e-12)).clamp(max=1.0) if math.isfinite(clip) else None
    optimizer.zero_grad(set_to_none=True)
    for k, p in params.items():
        g = grads[k].detach()
        p.grad = (g if scale is None else g * scale.to(g.dtype)).to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if validation_enabled() and not all(bool(torch.isfinite(p).all()) for p in params.values()):
        raise ValueError("optimizer: its step made the model's parameters non-finite (NaN or "
                         "inf); lower the learning rate or check the reward's gradient")
    return float(norm)


def pathwise_draw(estimator: str, generator: torch.Generator | None = None,
                  **knobs: Any) -> Draw:
    """A :data:`Draw` from the registry's pathwise ``estimator`` (``knobs``: its settings),
    drawing from ``generator`` (``None``: the global RNG)."""
    base = sampler(estimator, **knobs)

    def draw(logits: Tensor, k: int) -> Tensor:
        return base(logits, generator=generator)

    return draw


# ---------------------------------------------------------------- one sampler step
def _step(model: nn.Module, params: Params, ref_params: Params | None, x: Tensor,
          reveal: Tensor, draw: Draw, k: int, n_steps: int, mask_id: int, vocab: int,
          with_kl: bool) -> tuple[Tensor, Tensor]:
    """Step ``k`` from the state ``x`` ``(N, L, W)``: ``(x_{k+1}, kl_k (N,))``; positions with
    ``reveal`` ``(N, L)`` get the draw, the others are carried over."""
    logits = _logits(model, params, x, mask_id, vocab)
    y = draw(logits, k)
    if not isinstance(y, Tensor) or y.shape != logits.shape:
        raise ValueError(f"draw: must return a sample shaped like the logits "
                         f"{tuple(logits.shape)}, got {shape_str(y)}")
    w = x.shape[-1]
    if w > vocab:
        y = nn.functional.pad(y, (0, w - vocab))
    x_next = torch.where(reveal.unsqueeze(-1), y.to(x.dtype), x)
    if not with_kl:
        return x_next, x.new_zeros(x.shape[0])
    ref = _logits(model, ref_params, x, mask_id, vocab)
    masked = x[..., mask_id] > 0.5
    kl = (_kl(logits, ref, mask_id) * masked).sum(-1) * _reveal_prob(k, n_steps)
    return x_next, kl


def _reveals(x: Tensor, u: Tensor, k: int, n_steps: int, mask_id: int) -> Tensor:
    masked = x[..., mask_id] > 0.5
    if k == n_steps - 1:
        return masked
    return masked & (u < _reveal_prob(k, n_steps))


def _check_uniforms(u: Tensor, start: Tensor) -> None:
    if not isinstance(u, Tensor) or u.dim() != 3 or u.shape[1:] != start.shape \
            or u.shape[0] < 1:
        raise ValueError(f"reveal_u: must be uniforms shaped (T, N, L) with (N, L) = "
                         f"{tuple(start.shape)}, got {shape_str(u)}")


def unrolled_loss(model: nn.Module, params: Params, ref_params: Params | None, start: Tensor,
                  reveal_u: Tensor, reward_fn: RewardFn, draw: Draw, *,
                  kl_weight: float = 0.0, truncate: int | None = None,
                  mask_id: int | None = None, vocab: int | None = None,
                  ) -> tuple[Tensor, dict[str, Any]]:
    """``loss = -mean_n [R(x_T) - kl_weight * sum_k kl_k]`` on a fresh path, differentiable
    in ``params`` through the unrolled sampler (the last ``truncate`` steps only, if given).

    ``start`` ``(N, L)`` tokens (mask id = free); ``reveal_u`` ``(T, N, L)`` uniforms (a masked
    position is revealed at step ``k`` when ``u < p_k``); ``draw(logits, k)`` the token draws
    (see :func:`pathwise_draw`). ``info``: ``reward``, ``kl`` (floats; the KL of the steps run
    without a graph counted too; 0 when ``kl_weight == 0``), ``path`` ``(T + 1, N, L, W)``
    (detached states) and ``reward_per_seq`` ``(N,)``.
    """
    mask_id, vocab = _ids(model, mask_id, vocab)
    _check_reward_fn(reward_fn)
    check_real(kl_weight, "kl_weight", ge=0)
    if kl_weight > 0 and ref_params is None:
        raise ValueError("ref_params: is required when kl_weight > 0")
    start = check_tokens(start, None, name="start")
    _check_uniforms(reveal_u, start)
    n_steps = reveal_u.shape[0]
    if truncate is not None:
        check_int(truncate, "truncate", 1)
    dtype = next(iter(params.values())).dtype
    x = nn.functional.one_hot(start, _width(mask_id, vocab)).to(dtype)
    kl = x.new_zeros(x.shape[0])
    path = [x]
    for k in range(n_steps):
        graph = truncate is None or k >= n_steps - truncate
        with torch.set_grad_enabled(graph and torch.is_grad_enabled()):
            reveal = _reveals(x, reveal_u[k], k, n_steps, mask_id)
            x, kl_k = _step(model, params, ref_params, x, reveal, draw, k, n_steps, mask_id,
                            vocab, kl_weight > 0)
        kl = kl + kl_k
        path.append(x.detach())
    r = _reward(reward_fn, x[..., :vocab], need_grad=True)
    loss = -(r - kl_weight * kl).mean()
    return loss, {"reward": float(r.detach().mean()), "kl": float(kl.detach().mean()),
                  "path": torch.stack(path), "reward_per_seq": r.detach()}


# ---------------------------------------------------------------- adjoint (queue)
def _check_path(path: Tensor, mask_id: int, vocab: int) -> None:
    w = _width(mask_id, vocab)
    if not isinstance(path, Tensor) or path.dim() != 4 or path.shape[0] < 2 \
            or path.shape[-1] != w or not path.is_floating_point():
        raise ValueError(f"path: must be float states shaped (T + 1, N, L, {w}), got "
                         f"{shape_str(path)}")


def adjoint_grad(model: nn.Module, params: Params, ref_params: Params | None, path: Tensor,
                 reward_fn: RewardFn, draw: Draw, *, kl_weight: float = 0.0,
                 truncate: int | None = None, mask_id: int | None = None,
                 vocab: int | None = None) -> tuple[Params, dict[str, float]]:
    """Gradient of the loss of :func:`unrolled_loss` along a stored ``path`` ``(T + 1, N, L,
    W)`` (``path[k] = x_k``), one step's graph at a time: ``a = grad R(x_T) / N``, then for
    ``k = T - 1, ..., 0`` (down to ``T - truncate``) the vector-Jacobian product of ``(x_{k+1},
    kl_k)`` at ``x_k`` with the current ``params``, the reveals read off the path and the
    token draw ``draw(logits, k)`` re-run (give it the noise of the original run: the queue
    seeds a generator per population and step). Returns ``(grads, info)``, ``info`` with the
    mean ``reward`` and ``kl`` (of the differentiated steps).
    """
    mask_id, vocab = _ids(model, mask_id, vocab)
    _check_path(path, mask_id, vocab)
    _check_reward_fn(reward_fn)
    check_real(kl_weight, "kl_weight", ge=0)
    if kl_weight > 0 and ref_params is None:
        raise ValueError("ref_params: is required when kl_weight > 0")
    n_steps, n = path.shape[0] - 1, path.shape[1]
    first = 0 if truncate is None else n_steps - check_int(truncate, "truncate", 1)
    x_end = path[-1].detach().requires_grad_(True)
    with torch.enable_grad():
        r = _reward(reward_fn, x_end[..., :vocab], need_grad=True)
        (a,) = torch.autograd.grad(r.sum() / n, x_end)
    plist = list(params.values())
    acc = [torch.zeros_like(p) for p in plist]
    kl = path.new_zeros(n)
    for k in reversed(range(max(first, 0), n_steps)):
        x = path[k].detach().requires_grad_(True)
        reveal = (path[k][..., mask_id] > 0.5) & (path[k + 1][..., mask_id] < 0.5)
        with torch.enable_grad():
            x_next, kl_k = _step(model, params, ref_params, x, reveal, draw, k, n_steps,
                                 mask_id, vocab, kl_weight > 0)
            s = (x_next * a).sum() - (kl_weight / n) * kl_k.sum()
            grads = torch.autograd.grad(s, [x, *plist], allow_unused=True)
        a = torch.zeros_like(x) if grads[0] is None else grads[0]
        for buf, g in zip(acc, grads[1:]):
            if g is not None:
                buf.add_(g)
        kl += kl_k.detach()
    out = {name: -g for name, g in zip(params, acc)}  # ascent on J -> descent on the loss
    return out, {"reward": float(r.detach().mean()), "kl": float(kl.mean())}


# ---------------------------------------------------------------- sampling, path KL
def sample_path(model: nn.Module, params: Params, start: Tensor, n_steps: int,
                generator: torch.Generator | None = None, *, draw: Draw | None = None,
                mask_id: int | None = None, vocab: int | None = None) -> Tensor:
    """A path ``(T + 1, N, L, W)`` of the sampler from ``start`` ``(N, L)``, without graph:
    tokens drawn exactly from the model's categoricals (Gumbel-max, ``generator``) unless
    ``draw`` is given."""
    mask_id, vocab = _ids(model, mask_id, vocab)
    check_int(n_steps, "n_steps", 1)
    start = check_tokens(start, None, name="start")
    dtype = next(iter(params.values())).dtype
    x = nn.functional.one_hot(start, _width(mask_id, vocab)).to(dtype)
    if draw is None:
        draw = _exact_draw(generator)
    path = [x]
    with torch.no_grad():
        for k in range(n_steps):
            u = torch.rand(start.shape, generator=generator, dtype=dtype, device=x.device)
            x, _ = _step(model, params, None, x, _reveals(x, u, k, n_steps, mask_id), draw, k,
                         n_steps, mask_id, vocab, False)
            path.append(x)
    return torch.stack(path)


def _exact_draw(generator: torch.Generator | None) -> Draw:
    def draw(logits: Tensor, k: int) -> Tensor:
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype,
                       device=logits.device)
        g = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        return nn.functional.one_hot((logits + g).argmax(-1), logits.shape[-1]).to(logits)
    return draw


def path_kl(model: nn.Module, params: Params, ref_params: Params, path: Tensor, *,
            mask_id: int | None = None, vocab: int | None = None) -> Tensor:
    """Per-sequence ``sum_k kl_k`` along ``path`` ``(T + 1, N, L, W)``: ``(N,)``; its mean over
    paths drawn with ``params`` is ``KL(path_theta || path_ref)``."""
    mask_id, vocab = _ids(model, mask_id, vocab)
    _check_path(path, mask_id, vocab)
    n_steps = path.shape[0] - 1
    total = path.new_zeros(path.shape[1])
    with torch.no_grad():
        for k in range(n_steps):
            x = path[k]
            lq = _logits(model, params, x, mask_id, vocab)
            lp = _logits(model, ref_params, x, mask_id, vocab)
            total += (_kl(lq, lp, mask_id) * (x[..., mask_id] > 0.5)).sum(-1) \
                * _reveal_prob(k, n_steps)
    return total


# ---------------------------------------------------------------- REINFORCE-LOO
def reinforce_grad(model: nn.Module, params: Params, ref_params: Params | None, path: Tensor,
                   reward_fn: RewardFn, *, kl_weight: float = 0.0, mask_id: int | None = None,
                   vocab: int | None = None) -> tuple[Params, dict[str, float]]:
    """Policy-gradient estimate of the loss' gradient on a hard ``path`` ``(T + 1, N, L, W)``
    drawn with ``params`` (``N >= 2``): with ``c_n = R_n - kl_weight * sum_k kl_k`` and the
    leave-one-out baseline ``b_n = mean_{m != n} c_m``,
    ``-(1/N) sum_n [(c_n - b_n) grad log p_theta(path_n) - kl_weight grad sum_k kl_k]``,
    where ``log p_theta(path_n)`` sums the log-probabilities of the tokens revealed at every
    step (the reveal decisions do not depend on theta). One step's graph at a time."""
    mask_id, vocab = _ids(model, mask_id, vocab)
    _check_path(path, mask_id, vocab)
    _check_reward_fn(reward_fn)
    check_real(kl_weight, "kl_weight", ge=0)
    if kl_weight > 0 and ref_params is None:
        raise ValueError("ref_params: is required when kl_weight > 0")
    n_steps, n = path.shape[0] - 1, path.shape[1]
    if n < 2:
        raise ValueError(f"path: the leave-one-out baseline needs N >= 2 sequences, got {n}")
    with torch.no_grad():
        r = _reward(reward_fn, path[-1][..., :vocab], need_grad=False)
        kl = path_kl(model, params, ref_params, path, mask_id=mask_id, vocab=vocab) \
            if kl_weight > 0 else path.new_zeros(n)
        c = r - kl_weight * kl
        adv = c - (c.sum() - c) / (n - 1)
    plist = list(params.values())
    acc = [torch.zeros_like(p) for p in plist]
    for k in range(n_steps):
        x, nxt = path[k], path[k + 1]
        reveal = (x[..., mask_id] > 0.5) & (nxt[..., mask_id] < 0.5)
        tok = nxt[..., :vocab].argmax(-1, keepdim=True)
        with torch.enable_grad():
            logits = _logits(model, params, x, mask_id, vocab)
            logp = (torch.log_softmax(logits, -1).gather(-1, tok).squeeze(-1) * reveal).sum(-1)
            s = (adv * logp).sum() / n
            if kl_weight > 0:
                ref = _logits(model, ref_params, x, mask_id, vocab)
                kl_k = (_kl(logits, ref, mask_id) * (x[..., mask_id] > 0.5)).sum(-1) \
                    * _reveal_prob(k, n_steps)
                s = s - kl_weight * kl_k.sum() / n
            grads = torch.autograd.grad(s, plist, allow_unused=True)
        for buf, g in zip(acc, grads):
            if g is not None:
                buf.add_(g)
    out = {name: -g for name, g in zip(params, acc)}
    return out, {"reward": float(r.mean()), "kl": float(kl.mean())}


# ---------------------------------------------------------------- states
@dataclass
class MDMUnrolledState:
    """State of the unrolled pathwise and the REINFORCE methods: the optimizer (over the
    model's trainable parameters), their frozen KL reference, the rng of the sampler's draws
    and the starting tokens ``(N, L)``."""

    optimizer: torch.optim.Optimizer
    ref_params: Params
    generator: torch.Generator
    start: Tensor
    mask_id: int
    vocab: int
    iteration: int = 0
    pool: Tensor | None = None  # (M, L) starting tokens drawn from per theta step (or None)


@dataclass
class MDMFinetuneState:
    """State of the queue. ``paths[p, k]`` is ``x_k`` of population ``p`` and ``stage[p]``
    the steps it has done; ``seeds[p]`` seeds its token draws (a generator per step, re-run
    by the adjoint). The model's own parameters are the ones being trained."""

    optimizer: torch.optim.Optimizer
    ref_params: Params
    paths: Tensor  # (T, T + 1, N, L, W)
    stage: Tensor  # (T,) long
    seeds: list[int]
    generator: torch.Generator  # reveal decisions and fresh seeds, on the model's device
    start: Tensor  # (N, L)
    mask_id: int
    vocab: int
    iteration: int = 0
    pool: Tensor | None = None  # (M, L) starting tokens drawn from at every restart


def _init_common(model: nn.Module, cfg: MDMFinetuneConfig, params: Iterable[Tensor] | None,
                 optimizer: OptimizerFactory | None, given: Tensor | None,
                 mask_id: int | None, vocab: int | None, seq_len: int | None,
                 pool: Tensor | None = None
                 ) -> tuple[Params, Params, torch.optim.Optimizer, Tensor, int, int,
                            torch.Generator, Tensor | None]:
    _check_cfg(cfg)
    mask_id, vocab = _ids(_check_model(model), mask_id, vocab)
    trainable = _trainable(model, params)
    ref = {k: p.detach().clone() for k, p in trainable.items()}
    if optimizer is not None and not callable(optimizer):
        raise TypeError(f"optimizer: must be a factory params -> torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    opt = make_optimizer(trainable.values(), cfg.optimizer, cfg.lr, optimizer)
    p0 = next(iter(trainable.values()))
    if seq_len is None:
        seq_len = getattr(getattr(model, "config", None), "seq_len", None)
        if seq_len is None and given is not None:
            seq_len = given.shape[-1]
        if seq_len is None and isinstance(pool, Tensor):
            seq_len = pool.shape[-1]
    if seq_len is None:
        raise ValueError("seq_len: give the sequence length (or given=, or a model with "
                         ".config.seq_len)")
    check_int(seq_len, "seq_len", 1)
    _probe(model, seq_len, mask_id, vocab, p0.dtype, p0.device)
    pool = _check_pool(pool, given, seq_len, mask_id, vocab, p0.device)
    gen = torch.Generator(device=p0.device).manual_seed(cfg.seed)
    start = _start(given, cfg.pop_size, seq_len, mask_id, vocab, p0.device) if pool is None \
        else _draw_starts(pool, cfg.pop_size, gen)
    return trainable, ref, opt, start, mask_id, vocab, gen, pool


def unrolled_init(model: nn.Module, cfg: MDMFinetuneConfig, *,
                  params: Iterable[Tensor] | None = None,
                  optimizer: OptimizerFactory | None = None, given: Tensor | None = None,
                  mask_id: int | None = None, vocab: int | None = None,
                  seq_len: int | None = None, pool: Tensor | None = None) -> MDMUnrolledState:
    """State of the unrolled pathwise method (also used by :func:`reinforce_step`, see
    :func:`reinforce_init`). Trains ``params`` (default: every parameter with
    ``requires_grad``) with ``optimizer(params)`` or ``torch.optim.<cfg.optimizer>``; keeps
    a frozen copy as the KL reference. ``given``: ``(L,)`` or ``(pop_size, L)`` tokens
    clamped in every path (mask id = free). ``pool`` (instead of ``given``): ``(M, L)``
    starting tokens (e.g. the clues of M puzzles); every theta step draws its ``pop_size``
    starts from them, uniformly with replacement, with the state's generator.
    ``mask_id`` / ``vocab`` / ``seq_len`` default to ``model.config``'s. One probe call
    checks the model contract (float one-hot inputs)."""
    _, ref, opt, start, mask_id, vocab, gen, pool = _init_common(
        model, cfg, params, optimizer, given, mask_id, vocab, seq_len, pool)
    return MDMUnrolledState(opt, ref, gen, start, mask_id, vocab, pool=pool)


def reinforce_init(model: nn.Module, cfg: MDMFinetuneConfig, **kwargs: Any
                   ) -> MDMUnrolledState:
    """As :func:`unrolled_init`; ``cfg.pop_size`` must be >= 2 (the leave-one-out
    baseline)."""
    _check_cfg(cfg)
    if cfg.pop_size < 2:
        raise ValueError(f"pop_size: REINFORCE with a leave-one-out baseline needs >= 2, got "
                         f"{cfg.pop_size}")
    return unrolled_init(model, cfg, **kwargs)


def _check_state(state: Any, cls: type, init: str) -> None:
    if not isinstance(state, cls):
        raise TypeError(f"state: must be an {cls.__name__} from {init}, got "
                        f"{type(state).__name__}")


def unrolled_step(state: MDMUnrolledState, model: nn.Module, reward_fn: RewardFn,
                  cfg: MDMFinetuneConfig) -> tuple[MDMUnrolledState, dict[str, float]]:
    """One theta step: a fresh path of ``cfg.pop_size`` sequences with autograd through its
    T steps (the last ``cfg.truncate``), backward, one optimizer step on ``model`` (in
    place). ``info``: ``reward``, ``kl`` (0 when ``kl_weight == 0``), ``grad_norm``."""
    _check_state(state, MDMUnrolledState, "unrolled_init")
    _check_cfg(cfg)
    params = _optimized(model, state.optimizer)
    p0 = next(iter(params.values()))
    if state.pool is not None:
        state = dataclasses.replace(state, start=_draw_starts(state.pool, cfg.pop_size,
                                                              state.generator))
    u = torch.rand((cfg.n_steps, *state.start.shape), generator=state.generator,
                   dtype=p0.dtype, device=p0.device)
    draw = pathwise_draw(cfg.estimator, state.generator, **cfg.knobs)
    loss, info = unrolled_loss(model, params, state.ref_params, state.start, u, reward_fn, draw,
                               kl_weight=cfg.kl_weight, truncate=cfg.truncate,
                               mask_id=state.mask_id, vocab=state.vocab)
    g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    grads = {k: torch.zeros_like(p) if gi is None else gi
             for (k, p), gi in zip(params.items(), g)}
    out = {"reward": info["reward"], "kl": info["kl"],
           "grad_norm": _apply(state.optimizer, params, grads, cfg.grad_clip)}
    return dataclasses.replace(state, iteration=state.iteration + 1), out


def reinforce_step(state: MDMUnrolledState, model: nn.Module, reward_fn: RewardFn,
                   cfg: MDMFinetuneConfig) -> tuple[MDMUnrolledState, dict[str, float]]:
    """One theta step of the policy-gradient baseline: ``cfg.pop_size`` paths drawn exactly
    (no graph), :func:`reinforce_grad`, one optimizer step. ``info``: ``reward``, ``kl``,
    ``grad_norm``."""
    _check_state(state, MDMUnrolledState, "reinforce_init")
    _check_cfg(cfg)
    params = _optimized(model, state.optimizer)
    if state.pool is not None:
        state = dataclasses.replace(state, start=_draw_starts(state.pool, cfg.pop_size,
                                                              state.generator))
    path = sample_path(model, params, state.start, cfg.n_steps, state.generator,
                       mask_id=state.mask_id, vocab=state.vocab)
    grads, info = reinforce_grad(model, params, state.ref_params, path, reward_fn,
                                 kl_weight=cfg.kl_weight, mask_id=state.mask_id,
                                 vocab=state.vocab)
    info["grad_norm"] = _apply(state.optimizer, params, grads, cfg.grad_clip)
    return dataclasses.replace(state, iteration=state.iteration + 1), info


# ---------------------------------------------------------------- queue
_SEED_TOP = 2**40


def _step_generator(seed: int, k: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)


def _seeded_draw(cfg: MDMFinetuneConfig, seed: int, device: torch.device) -> Draw:
    base = sampler(cfg.estimator, **cfg.knobs)

    def draw(logits: Tensor, k: int) -> Tensor:
        return base(logits, generator=_step_generator(seed, k, device))

    return draw


def _new_seed(gen: torch.Generator) -> int:
    return int(torch.randint(_SEED_TOP, (1,), generator=gen, device=gen.device))


def _advance(model: nn.Module, params: Params, state: MDMFinetuneState, slots: list[int],
             cfg: MDMFinetuneConfig) -> None:
    """Advance populations ``slots`` by one step each in ONE batched model call (no graph);
    writes ``paths`` and increments ``stage`` in place."""
    if not slots:
        return
    t_total = state.paths.shape[0]
    stages = [int(state.stage[p]) for p in slots]
    if any(s >= t_total for s in stages):
        raise ValueError("slots: cannot advance a finished population")
    idx = torch.tensor(slots, device=state.paths.device)
    ks = torch.tensor(stages, device=state.paths.device)
    cur = state.paths[idx, ks]  # (S, N, L, W)
    s, n, length, w = cur.shape
    u = torch.rand((s, n, length), generator=state.generator, dtype=cur.dtype,
                   device=cur.device)
    with torch.no_grad():
        logits = _logits(model, params, cur.reshape(s * n, length, w), state.mask_id,
                         state.vocab).reshape(s, n, length, -1)
        for i, (p, k) in enumerate(zip(slots, stages)):
            y = _seeded_draw(cfg, state.seeds[p], cur.device)(logits[i], k)
            if w > state.vocab:
                y = nn.functional.pad(y, (0, w - state.vocab))
            reveal = _reveals(cur[i], u[i], k, t_total, state.mask_id)
            state.paths[p, k + 1] = torch.where(reveal.unsqueeze(-1), y.to(cur.dtype), cur[i])
    state.stage[idx] += 1


def finetune_init(model: nn.Module, cfg: MDMFinetuneConfig, *,
                  params: Iterable[Tensor] | None = None,
                  optimizer: OptimizerFactory | None = None, given: Tensor | None = None,
                  mask_id: int | None = None, vocab: int | None = None,
                  seq_len: int | None = None, pool: Tensor | None = None) -> MDMFinetuneState:
    """Fill the queue with the model as it is: population ``p`` has done ``p`` of the
    ``cfg.n_steps`` steps (``T - 1`` batched warm-up calls); afterwards every
    :func:`finetune_step` finishes one population. Arguments as :func:`unrolled_init`
    (``pool``: every population, and every restart, draws its own ``pop_size`` starts)."""
    trainable, ref, opt, start, mask_id, vocab, gen, pool = _init_common(
        model, cfg, params, optimizer, given, mask_id, vocab, seq_len, pool)
    t_total = cfg.n_steps
    dtype, width = next(iter(ref.values())).dtype, _width(mask_id, vocab)
    x0 = nn.functional.one_hot(start, width).to(dtype)
    paths = x0.new_zeros((t_total, t_total + 1, *x0.shape))
    paths[:, 0] = x0
    if pool is not None:  # population 0 keeps `start`, the others draw their own
        for p in range(1, t_total):
            paths[p, 0] = nn.functional.one_hot(_draw_starts(pool, cfg.pop_size, gen),
                                                width).to(dtype)
    stage = torch.zeros(t_total, dtype=torch.long, device=x0.device)
    seeds = [_new_seed(gen) for _ in range(t_total)]
    state = MDMFinetuneState(opt, ref, paths, stage, seeds, gen, start, mask_id, vocab,
                             pool=pool)
    for i in range(t_total - 1):
        _advance(model, trainable, state, list(range(i + 1, t_total)), cfg)
    return state


def finetune_step(state: MDMFinetuneState, model: nn.Module, reward_fn: RewardFn,
                  cfg: MDMFinetuneConfig) -> tuple[MDMFinetuneState, dict[str, float]]:
    """One iteration of the queue: advance all T populations (one batched call), the adjoint
    gradient of the finished one (:func:`adjoint_grad`, its draws re-seeded), one optimizer
    step on ``model`` (in place), restart it. ``info``: ``reward``, ``kl``, ``grad_norm``,
    ``finished_slot``. A step that fails leaves the queue as it was."""
    _check_state(state, MDMFinetuneState, "finetune_init")
    _check_cfg(cfg)
    _check_reward_fn(reward_fn)
    t_total = cfg.n_steps
    if state.paths.shape[:2] != (t_total, t_total + 1):
        raise ValueError(f"cfg: n_steps = {t_total}, but the state was built for T = "
                         f"{state.paths.shape[0]}")
    params = _optimized(model, state.optimizer)
    stage0, rng0 = state.stage.clone(), state.generator.get_state()
    try:
        _advance(model, params, state, list(range(t_total)), cfg)
        done = (state.stage == t_total).nonzero().flatten().tolist()
        if len(done) != 1:
            raise ValueError(f"state: corrupt queue, {len(done)} populations finished at once")
        p = done[0]
        draw = _seeded_draw(cfg, state.seeds[p], state.paths.device)
        grads, info = adjoint_grad(model, params, state.ref_params, state.paths[p], reward_fn,
                                   draw, kl_weight=cfg.kl_weight, truncate=cfg.truncate,
                                   mask_id=state.mask_id, vocab=state.vocab)
    except BaseException:
        state.stage.copy_(stage0)
        state.generator.set_state(rng0)
        raise
    info["grad_norm"] = _apply(state.optimizer, params, grads, cfg.grad_clip)
    state.stage[p] = 0
    state.seeds[p] = _new_seed(state.generator)
    if state.pool is not None:
        state.paths[p, 0] = nn.functional.one_hot(
            _draw_starts(state.pool, cfg.pop_size, state.generator),
            state.paths.shape[-1]).to(state.paths.dtype)
    info["finished_slot"] = p
    return dataclasses.replace(state, iteration=state.iteration + 1), info
