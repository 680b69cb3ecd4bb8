"""Exact enumeration of all ``K**L`` configurations: the ground truth for small problems."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from samplegrad.categorical._checks import (
    check_callable,
    check_finite_values,
    check_logits,
    compute_dtype,
)

MAX_CONFIGS = 2**20


def _configs(start: int, stop: int, n_vars: int, k: int, device) -> torch.Tensor:
    """Class indices ``(stop - start, n_vars)`` of configurations ``start..stop-1`` (base k)."""
    idx = torch.arange(start, stop, device=device)
    powers = k ** torch.arange(n_vars - 1, -1, -1, device=device)
    return (idx[:, None] // powers) % k


def exact(f: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, *,
          chunk_size: int = 4096, max_configs: int = MAX_CONFIGS,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[f], d E[f] / d logits)`` by enumerating every configuration.

    All variables of ``logits`` (``(*batch, K)``, ``L = prod(batch)``) are one joint
    configuration; ``f`` receives chunks of one-hots ``(chunk, *logits.shape)`` and returns
    ``(chunk,)``. The value keeps the graph of ``f``'s own parameters (the probabilities are
    constants in it); the gradient w.r.t. logits is ``sum_c p(c) f(c) (onehot(c) - pi)``.
    Refuses (ValueError) when ``K**L > max_configs``. Configurations that use a masked
    (``-inf``) class have probability 0: ``f`` still sees them (every chunk has a fixed
    shape, so this runs under ``torch.compile``/``torch.func``) but their values are ignored,
    also when non-finite; a non-finite value at a configuration of positive probability is a
    ``ValueError`` naming ``f`` (when validation is on).
    """
    check_callable(f)
    check_logits(logits)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be an integer >= 1, got {chunk_size!r}")
    if isinstance(max_configs, bool) or not isinstance(max_configs, int) or max_configs < 1:
        raise ValueError(f"max_configs: must be an integer >= 1, got {max_configs!r}")
    k = logits.shape[-1]
    n_vars = logits.numel() // k
    if (k > 1 and n_vars * math.log(k) > math.log(max_configs) + 1.0) or k**n_vars > max_configs:
        raise ValueError(f"logits: exact enumeration needs K**L = {k}**{n_vars} configurations,"
                         f" above max_configs={max_configs}; use a Monte Carlo method instead")
    dt = compute_dtype(logits)
    logp = torch.log_softmax(logits.detach().to(dt), -1).reshape(n_vars, k)
    probs = logp.exp()
    eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
    value = torch.zeros((), dtype=dt, device=logits.device)
    grad = torch.zeros(n_vars, k, dtype=dt, device=logits.device)
    total = k**n_vars
    for start in range(0, total, chunk_size):
        cfg = _configs(start, min(start + chunk_size, total), n_vars, k, logits.device)
        lpc = logp.gather(1, cfg.T).sum(0)
        pc = lpc.exp()
        keep = pc > 0  # configurations using a masked class have probability 0
        onehot = eye[cfg].reshape(len(cfg), *logits.shape)
        fx = f(onehot)
        if not isinstance(fx, torch.Tensor):
            raise TypeError(f"f: must return a torch.Tensor of shape ({len(cfg)},), got "
                            f"{type(fx).__name__}")
        if fx.shape != (len(cfg),):
            raise ValueError(f"f: must return one value per configuration, shape ({len(cfg)},);"
                             f" got {tuple(fx.shape)}")
        fx = torch.where(keep, fx.to(dt), torch.zeros((), dtype=dt, device=fx.device))
        check_finite_values(fx, "f")
        value = value + (pc * fx).sum()
        w = pc * fx.detach()
        grad = grad + (torch.einsum("c,clk->lk", w, onehot.reshape(len(cfg), n_vars, k).to(dt))
                       - w.sum() * probs)
    return value.to(logits.dtype), grad.reshape(logits.shape).to(logits.dtype)
