"""Categorical VAEs: MLP encoder/decoder, −ELBO training with any estimator, exact evaluation.

Model: ``L`` categorical latents with ``K`` classes each, uniform prior ``p(z) = K^-L``,
Bernoulli decoder ``p(x | z)`` over ``D`` pixels, encoder ``q(z | x) = prod_l Cat(z_l |
softmax(logits_l(x)))``. Training minimizes the per-datapoint −ELBO

    E_q[-log p(x | z)] + KL(q(z | x) || uniform)          (KL analytic)

with the gradient w.r.t. the encoder logits from a named estimator: pathwise estimators
sample ``z`` inside the model (``sampler(name)``), score-function estimators get the
reconstruction term as an objective of one-hot ``z`` (``estimate(f, logits, name, S)``).

Evaluation never relaxes: :func:`neg_elbo` and :func:`iwae_bound` draw exact one-hot
``z ~ q(z | x)``; :func:`enumerate_log_px` / :func:`enumerate_neg_elbo` are the ground truth
for small ``K^L``. Training is a :func:`train_init` / :func:`train_step` pair over a
:class:`VAETrainState` (``train_step`` returns ``(state, info)``); :func:`fit` loops with
atomic checkpoints (:func:`save_train_state` / :func:`load_train_state`) and exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import samplegrad as sg
from samplegrad import distributed as sgd
from samplegrad._config import check_bool, check_choice, check_int, check_real
from samplegrad.categorical import get_method
from samplegrad.categorical._sampling import sample_one_hot
from samplegrad.checkpoint import (
    DeferredInterrupt,
    load_training_state,
    save_training_state,
)
from samplegrad_bench.estimators import estimate, is_score_function, sampler, with_state

OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class VAEConfig:
    """Architecture: ``D``-hidden...-(L x K) encoder, mirrored decoder, LeakyReLU."""

    n_pixels: int = 64
    n_latent: int = 20
    n_classes: int = 10
    hidden: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        check_int(self.n_pixels, "n_pixels", 1)
        check_int(self.n_latent, "n_latent", 1)
        check_int(self.n_classes, "n_classes", 2)
        if not isinstance(self.hidden, tuple):
            raise ValueError(f"hidden: must be a tuple of layer sizes, got {self.hidden!r}")
        for h in self.hidden:
            check_int(h, "hidden", 1)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class CategoricalVAE(nn.Module):
    """Encoder ``x (..., D) -> logits (..., L, K)``; decoder ``z (..., L, K) -> (..., D)``
    Bernoulli logits."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        lk = cfg.n_latent * cfg.n_classes
        self.encoder = _mlp([cfg.n_pixels, *cfg.hidden, lk])
        self.decoder = _mlp([lk, *reversed(cfg.hidden), cfg.n_pixels])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).unflatten(-1, (self.cfg.n_latent, self.cfg.n_classes))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.flatten(-2))


# ----------------------------------------------------------------------------- densities


def bernoulli_log_lik(pixel_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | z)`` summed over pixels: ``(..., D), (B, D) -> (..., B)``."""
    pixel_logits, x = torch.broadcast_tensors(pixel_logits, x)
    return -F.binary_cross_entropy_with_logits(pixel_logits, x, reduction="none").sum(-1)


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """``KL(q || uniform)`` summed over latents: ``(B, L, K) -> (B,)``."""
    logq = torch.log_softmax(logits, -1)
    k = logits.shape[-1]
    return (logq.exp() * logq).sum((-2, -1)) + logits.shape[-2] * math.log(k)


def log_q(logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``log q(z | x)`` of one-hot ``z (..., B, L, K)``, ``logits (B, L, K)`` -> ``(..., B)``."""
    return (z * torch.log_softmax(logits, -1)).sum((-2, -1))


def log_prior(n_latent: int, n_classes: int) -> float:
    """``log p(z)`` of the uniform prior."""
    return -n_latent * math.log(n_classes)


# ----------------------------------------------------------------------------- evaluation


def _check_samples(n_samples: int, name: str = "n_samples") -> int:
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n_samples}")
    return int(n_samples)


@torch.no_grad()
def neg_elbo(model: CategoricalVAE, x: torch.Tensor, n_samples: int = 1,
             generator: torch.Generator | None = None, chunk: int = 64) -> torch.Tensor:
    """Monte Carlo −ELBO ``(B,)`` with exact one-hot ``z ~ q(z | x)`` (no relaxation) and the
    analytic KL; ``n_samples`` draws per datapoint, ``chunk`` of them at a time."""
    n_samples = _check_samples(n_samples)
    logits = model.encode(x)
    probs = torch.softmax(logits, -1)
    recon = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, n_samples, chunk):
        s = min(chunk, n_samples - start)
        z = sample_one_hot(probs.expand(s, *probs.shape), generator)
        recon -= bernoulli_log_lik(model.decode(z), x).sum(0)
    return recon / n_samples + kl_to_uniform(logits)


@torch.no_grad()
def iwae_bound(model: CategoricalVAE, x: torch.Tensor, n_samples: int = 1000,
               generator: torch.Generator | None = None, chunk: int = 100,
               batch: int = 500) -> torch.Tensor:
    """Importance-weighted lower bound on ``log p(x)``, ``(B,)``:
    ``log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s | x)``, ``z_s ~ q(z | x)`` exact one-hots.

    Vectorized over ``chunk`` samples x ``batch`` datapoints per decoder call; the
    log-mean-exp is accumulated chunk by chunk, so memory does not grow with ``S``.
    """
    n_samples = _check_samples(n_samples)
    cfg = model.cfg
    lp = log_prior(cfg.n_latent, cfg.n_classes)
    out = []
    for b0 in range(0, x.shape[0], batch):
        xb = x[b0:b0 + batch]
        logits = model.encode(xb)
        probs = torch.softmax(logits, -1)
        acc = torch.full((xb.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        for start in range(0, n_samples, chunk):
            s = min(chunk, n_samples - start)
            z = sample_one_hot(probs.expand(s, *probs.shape), generator)
            logw = bernoulli_log_lik(model.decode(z), xb) + lp - log_q(logits, z)  # (s, B)
            acc = torch.logaddexp(acc, torch.logsumexp(logw, 0))
        out.append(acc - math.log(n_samples))
    return torch.cat(out)


def all_configs(n_latent: int, n_classes: int,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Every one-hot configuration, ``(K^L, L, K)`` (small ``K^L`` only)."""
    n = n_classes**n_latent
    if n > 2**16:
        raise ValueError(f"n_classes**n_latent = {n} is too many configurations to enumerate")
    powers = n_classes ** torch.arange(n_latent - 1, -1, -1, device=device)
    idx = torch.arange(n, device=device)[:, None] // powers % n_classes
    return F.one_hot(idx, n_classes).float()


@torch.no_grad()
def enumerate_log_px(model: CategoricalVAE, x: torch.Tensor) -> torch.Tensor:
    """Exact ``log p(x) = log sum_z p(z) p(x | z)`` by enumeration, ``(B,)``."""
    z = all_configs(model.cfg.n_latent, model.cfg.n_classes, x.device)[:, None]  # (C,1,L,K)
    ll = bernoulli_log_lik(model.decode(z), x)  # (C, B)
    return torch.logsumexp(ll, 0) + log_prior(model.cfg.n_latent, model.cfg.n_classes)


@torch.no_grad()
def enumerate_neg_elbo(model: CategoricalVAE, x: torch.Tensor) -> torch.Tensor:
    """Exact −ELBO ``sum_z q(z | x) [-log p(x | z)] + KL(q || uniform)``, ``(B,)``."""
    logits = model.encode(x)
    z = all_configs(model.cfg.n_latent, model.cfg.n_classes, x.device)[:, None]
    q = log_q(logits, z).exp()  # (C, B)
    recon = -(q * bernoulli_log_lik(model.decode(z), x)).sum(0)
    return recon + kl_to_uniform(logits)


# ----------------------------------------------------------------------------- training


@dataclass
class VAETrainConfig:
    """How one VAE is trained. ``knobs`` are the estimator's (``t1``, ``tau``, ...);
    ``n_samples`` latent draws per datapoint and step; REINFORCE's baseline is an EMA of past
    objective values with ``baseline_decay``. ``per_datapoint_credit`` (score-function
    estimators only): ``f`` returns one value per datapoint, so each image's encoder gradient
    is weighted by its own loss (``False``: by the whole minibatch's summed loss, the
    high-variance form).

    ``objective``: ``"elbo"`` (the default: −ELBO with analytic KL) or ``"iwae"``: the
    ``n_samples``-sample importance-weighted bound ``log (1/S) sum_s p(x, z_s) / q(z_s | x)``
    (``n_samples >= 2``), trained with ``vimco`` (its leave-one-out learning signals) or with
    a pathwise estimator (its samples fed through the bound); ``vimco`` only trains the IWAE
    bound and other score-function estimators only the ELBO."""

    estimator: str = "redge"
    knobs: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 1
    lr: float = 1e-3
    batch_size: int = 100
    dynamic_binarization: bool = False
    baseline_decay: float = 0.9
    per_datapoint_credit: bool = True
    objective: str = "elbo"

    def __post_init__(self) -> None:
        check_choice(self.estimator, "estimator", sg.methods())
        if not isinstance(self.knobs, dict):
            raise ValueError(f"knobs: must be a dict, got {type(self.knobs).__name__}")
        check_int(self.n_samples, "n_samples", 1)
        check_real(self.lr, "lr", gt=0)
        check_int(self.batch_size, "batch_size", 1)
        check_bool(self.dynamic_binarization, "dynamic_binarization")
        check_real(self.baseline_decay, "baseline_decay", ge=0, lt=1)
        check_bool(self.per_datapoint_credit, "per_datapoint_credit")
        check_choice(self.objective, "objective", ["elbo", "iwae"])
        kind = get_method(self.estimator).kind
        if self.objective == "iwae":
            if kind not in ("pathwise", "bound"):
                raise ValueError(f"objective: 'iwae' is trained with vimco or a pathwise "
                                 f"estimator, not {self.estimator!r}")
            if self.n_samples < 2:
                raise ValueError(f"n_samples: the IWAE bound needs >= 2 samples, got "
                                 f"{self.n_samples}")
        elif kind == "bound":
            raise ValueError(f"objective: {self.estimator!r} trains the multi-sample bound; "
                             "set objective='iwae'")


@dataclass
class VAETrainState:
    """Everything that changes during training (and is checkpointed)."""

    model: CategoricalVAE
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[float] = field(default_factory=list)  # training loss per step
    baseline: float | None = None  # REINFORCE EMA baseline (mean objective value)
    # the estimator's knobs for this run, with its state across steps (RELAX's control)
    knobs: dict[str, Any] = field(default_factory=dict)


def train_init(vae: VAEConfig, cfg: VAETrainConfig, seed: int = 0, *,
               device: torch.device | str | None = None,
               optimizer: OptimizerFactory | None = None) -> VAETrainState:
    """A fresh model (initialized from ``seed``, on ``device``) and its optimizer:
    ``optimizer(params)`` when that factory is given, else ``torch.optim.Adam`` with
    ``cfg.lr``."""
    torch.manual_seed(seed)
    model = CategoricalVAE(vae).to(device)
    params = list(model.parameters())
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=cfg.lr)
    return VAETrainState(model, opt, knobs=with_state(cfg.estimator, cfg.knobs))


def sample_batch(data: torch.Tensor, cfg: VAETrainConfig) -> torch.Tensor:
    """A minibatch ``(batch_size, D)`` drawn with replacement from the global RNG;
    with ``dynamic_binarization`` every pixel is resampled as ``Bernoulli(intensity)``."""
    x = data[torch.randint(len(data), (cfg.batch_size,), device=data.device)]
    return torch.bernoulli(x) if cfg.dynamic_binarization else x


def training_loss(model: CategoricalVAE, x: torch.Tensor, cfg: VAETrainConfig,
                  baseline: float | None = None, knobs: dict[str, Any] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrogate −ELBO per datapoint (batch mean) whose ``backward()`` gives the estimator's
    gradient, and the detached reconstruction values (for baselines): ``(S, B)`` per
    datapoint for score-function estimators with ``per_datapoint_credit``, else ``(S,)``
    batch sums.

    Pathwise: ``z = sampler(name)(logits)`` feeds the decoder (relaxed for gumbel_soft).
    Score function: ``f(z (S, B, L, K)) = -log p(x_b | z_b)`` per datapoint ``(S, B)`` (or
    its batch sum ``(S,)``) via ``estimate``; the decoder still gets its pathwise gradient
    through the surrogate's value. ``knobs``: the run's estimator knobs with their state
    (``VAETrainState.knobs``; default ``cfg.knobs``, so RELAX would get no control variate).
    """
    logits = model.encode(x)
    if cfg.objective == "iwae":
        return _iwae_training_loss(model, x, logits, cfg)
    kl = kl_to_uniform(logits).mean()
    b = x.shape[0]
    if is_score_function(cfg.estimator):
        vals: list[torch.Tensor] = []

        def f(z: torch.Tensor) -> torch.Tensor:
            v = -bernoulli_log_lik(model.decode(z), x)  # (S, B)
            if not cfg.per_datapoint_credit:
                v = v.sum(-1)
            vals.append(v.detach())
            return v

        knobs = dict(cfg.knobs if knobs is None else knobs)
        if cfg.estimator == "reinforce" and baseline is not None:
            knobs["baseline"] = baseline
        if cfg.estimator == "unordered_set" and cfg.per_datapoint_credit:
            knobs["batch_dims"] = 1  # one set of configurations per image
        recon = estimate(f, logits, cfg.estimator, cfg.n_samples, **knobs) / b
        return recon + kl, vals[0]
    s = cfg.n_samples
    z = sampler(cfg.estimator, **cfg.knobs)(logits.expand(s, *logits.shape))
    per = -bernoulli_log_lik(model.decode(z), x).sum(-1)  # (S,)
    return per.mean() / b + kl, per.detach()


def _log_weights(model: CategoricalVAE, x: torch.Tensor, logits: torch.Tensor,
                 z: torch.Tensor) -> torch.Tensor:
    """``log p(x | z) + log p(z) - log q(z | x)`` per sample and datapoint ``(S, B)``."""
    n_latent, n_classes = logits.shape[-2:]
    return (bernoulli_log_lik(model.decode(z), x) + log_prior(n_latent, n_classes)
            - log_q(logits, z))


def _iwae_training_loss(model: CategoricalVAE, x: torch.Tensor, logits: torch.Tensor,
                        cfg: VAETrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrogate of the negative ``S``-sample IWAE bound (batch mean) and the detached
    per-datapoint bounds ``(B,)``: VIMCO (``samplegrad.vimco``, one bound per image) or a
    pathwise estimator whose samples go through the bound."""
    b, s = x.shape[0], cfg.n_samples
    if get_method(cfg.estimator).kind == "bound":
        vals: list[torch.Tensor] = []

        def log_w(z: torch.Tensor) -> torch.Tensor:
            v = _log_weights(model, x, logits, z)  # (S, B)
            vals.append(v.detach())
            return v

        loss = -sg.vimco(log_w, logits, s, **cfg.knobs) / b
        bound = torch.logsumexp(vals[0], 0) - math.log(s)
        return loss, bound
    z = sampler(cfg.estimator, **cfg.knobs)(logits.expand(s, *logits.shape))
    bound = torch.logsumexp(_log_weights(model, x, logits, z), 0) - math.log(s)  # (B,)
    return -bound.mean(), bound.detach()


def _sharded_training_loss(model: CategoricalVAE, x: torch.Tensor, cfg: VAETrainConfig,
                           baseline: float | None, sl: slice,
                           knobs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of :func:`training_loss` on the global minibatch ``x`` ``(B, D)``:
    its items ``sl`` only, divided by the global ``B`` (summed over ranks: the one-process
    loss). The latent noise is drawn for the whole batch (:func:`samplegrad.distributed.
    embed_shard`), so every item gets the random numbers it gets in one process. Returns
    the loss share and the values' global mean (for the baseline) as a 0-d tensor."""
    if cfg.objective != "elbo":
        raise ValueError("objective: data-parallel training supports 'elbo' only")
    b, xs = x.shape[0], x[sl]
    logits = model.encode(xs)
    kl = kl_to_uniform(logits).sum() / b
    glogits = sgd.embed_shard(logits, sl, b, dim=0)
    s = cfg.n_samples
    if is_score_function(cfg.estimator):
        if not cfg.per_datapoint_credit:
            raise ValueError("per_datapoint_credit: False couples every item of the batch; "
                             "data-parallel training needs True")
        vals: list[torch.Tensor] = []

        def f(z: torch.Tensor) -> torch.Tensor:
            v = -bernoulli_log_lik(model.decode(z[..., sl, :, :]), xs)  # (S, b_rank)
            vals.append(v.detach())
            return sgd.embed_shard(v, sl, b, dim=-1)

        knobs = dict(knobs)
        if cfg.estimator == "reinforce" and baseline is not None:
            knobs["baseline"] = baseline
        recon = estimate(f, glogits, cfg.estimator, s, **knobs) / b
        mean = sgd.all_reduce(vals[0].sum().reshape(1)) / (vals[0].shape[0] * b)
        return recon + kl, mean[0]
    z = sampler(cfg.estimator, **cfg.knobs)(glogits.expand(s, *glogits.shape))[:, sl]
    per = -bernoulli_log_lik(model.decode(z), xs).sum(-1)  # (S,) this rank's items
    return per.mean() / b + kl, sgd.all_reduce(per.detach().clone()).mean()


def train_step(state: VAETrainState, x: torch.Tensor,
               cfg: VAETrainConfig) -> tuple[VAETrainState, dict[str, float]]:
    """One optimizer step on minibatch ``x`` ``(B, D)``; appends the loss to
    ``state.history``. Returns ``(state, {"loss": float})`` (``state`` advanced in place).

    Under ``torch.distributed`` (:func:`samplegrad.distributed.init_from_env`) ``x`` is the
    *global* minibatch, the same on every rank: each rank computes its shard of the items
    and the gradients are summed over ranks, so the step equals the one-process step up to
    the order of floating-point additions."""
    state.optimizer.zero_grad(set_to_none=True)
    if sgd.world().distributed:
        loss, vals = _sharded_training_loss(state.model, x, cfg, state.baseline,
                                            sgd.shard(x.shape[0]), _run_knobs(state, cfg))
        loss.backward()
        sgd.all_reduce_grads(state.model, op="sum")
        loss = sgd.all_reduce(loss.detach().clone())
    else:
        loss, vals = training_loss(state.model, x, cfg, state.baseline,
                                   _run_knobs(state, cfg))
        loss.backward()
    state.optimizer.step()
    v = float(vals.mean())
    d = cfg.baseline_decay
    state.baseline = v if state.baseline is None else d * state.baseline + (1 - d) * v
    state.step += 1
    state.history.append(float(loss.detach()))
    return state, {"loss": state.history[-1]}


def _run_knobs(state: VAETrainState, cfg: VAETrainConfig) -> dict[str, Any]:
    """The state's knobs, or a state made by hand without them: ``cfg.knobs``."""
    return state.knobs or dict(cfg.knobs)


def _stateful(state: VAETrainState) -> dict[str, Any]:
    """What a checkpoint saves and restores: model, optimizer, and the estimator's own state
    when it keeps one (RELAX's control variate, ``"control"``)."""
    out: dict[str, Any] = {"model": state.model, "optimizer": state.optimizer}
    if state.knobs.get("control") is not None:
        out["control"] = state.knobs["control"]
    return out


def save_train_state(path: str | Path, state: VAETrainState, **extra: Any) -> Path:
    """Atomic checkpoint of model, optimizer, the estimator's state (RELAX), RNG streams,
    step, history and baseline."""
    return save_training_state(path, _stateful(state), step=state.step,
                               history=state.history, baseline=state.baseline, **extra)


def load_train_state(path: str | Path, state: VAETrainState) -> dict[str, Any] | None:
    """Resume ``state`` in place from ``path`` (RNG streams too); the checkpoint's extras or
    ``None`` when there is no file."""
    got = load_training_state(path, _stateful(state))
    if got is None:
        return None
    state.step, state.history, state.baseline = got["step"], list(got["history"]), got["baseline"]
    return got


def fit(state: VAETrainState, data: torch.Tensor, cfg: VAETrainConfig, steps: int,
        checkpoint: str | Path | None = None, every: int = 500,
        callback: Callable[[VAETrainState], None] | None = None,
        progress_bar: Any = None) -> VAETrainState:
    """Train until ``state.step == steps``, resuming from ``checkpoint`` when it exists.

    Checkpoints every ``every`` steps and at the end. Ctrl-C (SIGINT) and a
    ``KeyboardInterrupt`` raised by ``callback`` stop at a step boundary after saving, so a
    rerun continues exactly where it stopped (same RNG draws, same parameters).
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    if int(every) != every or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every}")
    if checkpoint is not None:
        load_train_state(checkpoint, state)
    if progress_bar is not None:
        progress_bar.reset(total=steps)
        progress_bar.update(state.step)
    with DeferredInterrupt() as stop:
        while state.step < steps:
            train_step(state, sample_batch(data, cfg), cfg)
            if progress_bar is not None:
                progress_bar.update(1)
            interrupted = False
            try:
                if callback is not None:
                    callback(state)
            except KeyboardInterrupt:
                interrupted = True
            if sgd.world().distributed:  # every rank stops (and saves) at the same step
                flags = torch.tensor([float(interrupted), float(stop.requested)],
                                     device=data.device)
                interrupted, stop.requested = (bool(v) for v in sgd.all_reduce(flags, "max"))
            if checkpoint is not None and (interrupted or stop.requested
                                           or state.step % every == 0 or state.step == steps):
                if sgd.is_main():  # rank 0 writes (atomically); the others wait
                    save_train_state(checkpoint, state)
                sgd.barrier()
            if interrupted:
                raise KeyboardInterrupt
            stop.raise_if_requested()
    return state
