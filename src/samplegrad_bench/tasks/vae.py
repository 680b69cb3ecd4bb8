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
from samplegrad._config import check_bool, check_choice, check_int, check_real
from samplegrad.categorical._sampling import sample_one_hot
from samplegrad.checkpoint import (
    DeferredInterrupt,
    load_training_state,
    save_training_state,
)
from samplegrad_bench.estimators import estimate, is_score_function, sampler

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
    high-variance form)."""

    estimator: str = "redge"
    knobs: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 1
    lr: float = 1e-3
    batch_size: int = 100
    dynamic_binarization: bool = False
    baseline_decay: float = 0.9
    per_datapoint_credit: bool = True

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


@dataclass
class VAETrainState:
    """Everything that changes during training (and is checkpointed)."""

    model: CategoricalVAE
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[float] = field(default_factory=list)  # training loss per step
    baseline: float | None = None  # REINFORCE EMA baseline (mean objective value)


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
    return VAETrainState(model, opt)


def sample_batch(data: torch.Tensor, cfg: VAETrainConfig) -> torch.Tensor:
    """A minibatch ``(batch_size, D)`` drawn with replacement from the global RNG;
    with ``dynamic_binarization`` every pixel is resampled as ``Bernoulli(intensity)``."""
    x = data[torch.randint(len(data), (cfg.batch_size,), device=data.device)]
    return torch.bernoulli(x) if cfg.dynamic_binarization else x


def training_loss(model: CategoricalVAE, x: torch.Tensor, cfg: VAETrainConfig,
                  baseline: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrogate −ELBO per datapoint (batch mean) whose ``backward()`` gives the estimator's
    gradient, and the detached reconstruction values (for baselines): ``(S, B)`` per
    datapoint for score-function estimators with ``per_datapoint_credit``, else ``(S,)``
    batch sums.

    Pathwise: ``z = sampler(name)(logits)`` feeds the decoder (relaxed for gumbel_soft).
    Score function: ``f(z (S, B, L, K)) = -log p(x_b | z_b)`` per datapoint ``(S, B)`` (or
    its batch sum ``(S,)``) via ``estimate``; the decoder still gets its pathwise gradient
    through the surrogate's value.
    """
    logits = model.encode(x)
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

        knobs = dict(cfg.knobs)
        if cfg.estimator == "reinforce" and baseline is not None:
            knobs["baseline"] = baseline
        recon = estimate(f, logits, cfg.estimator, cfg.n_samples, **knobs) / b
        return recon + kl, vals[0]
    s = cfg.n_samples
    z = sampler(cfg.estimator, **cfg.knobs)(logits.expand(s, *logits.shape))
    per = -bernoulli_log_lik(model.decode(z), x).sum(-1)  # (S,)
    return per.mean() / b + kl, per.detach()


def train_step(state: VAETrainState, x: torch.Tensor,
               cfg: VAETrainConfig) -> tuple[VAETrainState, dict[str, float]]:
    """One optimizer step on minibatch ``x`` ``(B, D)``; appends the loss to
    ``state.history``. Returns ``(state, {"loss": float})`` (``state`` advanced in place)."""
    state.optimizer.zero_grad(set_to_none=True)
    loss, vals = training_loss(state.model, x, cfg, state.baseline)
    loss.backward()
    state.optimizer.step()
    v = float(vals.mean())
    d = cfg.baseline_decay
    state.baseline = v if state.baseline is None else d * state.baseline + (1 - d) * v
    state.step += 1
    state.history.append(float(loss.detach()))
    return state, {"loss": state.history[-1]}


def save_train_state(path: str | Path, state: VAETrainState, **extra: Any) -> Path:
    """Atomic checkpoint of model, optimizer, RNG streams, step, history and baseline."""
    return save_training_state(path, {"model": state.model, "optimizer": state.optimizer},
                               step=state.step, history=state.history,
                               baseline=state.baseline, **extra)


def load_train_state(path: str | Path, state: VAETrainState) -> dict[str, Any] | None:
    """Resume ``state`` in place from ``path`` (RNG streams too); the checkpoint's extras or
    ``None`` when there is no file."""
    got = load_training_state(path, {"model": state.model, "optimizer": state.optimizer})
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
            if checkpoint is not None and (interrupted or stop.requested
                                           or state.step % every == 0 or state.step == steps):
                save_train_state(checkpoint, state)
            if interrupted:
                raise KeyboardInterrupt
            stop.raise_if_requested()
    return state
