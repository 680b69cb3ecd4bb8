"""Exact draws of one-hot samples from probability vectors (class axis last)."""

from __future__ import annotations

import torch


def sample_one_hot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One-hot draw ``h ~ Cat(probs)`` by the inverse CDF, same shape and dtype as ``probs``.

    Classes with probability 0 are never drawn: the selected index is the first one whose
    cumulative sum exceeds ``u * total`` and so always has a positive increment.
    """
    p = probs.detach()
    cdf = p.cumsum(-1)
    total = cdf[..., -1:]
    u = torch.rand(total.shape, dtype=p.dtype, device=p.device, generator=generator)
    # u*total < total exactly: keeps the last positive class reachable, never past it
    v = torch.minimum(u * total, total * (1 - 4 * torch.finfo(p.dtype).eps))
    idx = (cdf <= v).sum(-1, keepdim=True).clamp_max_(p.shape[-1] - 1)
    return torch.zeros_like(p).scatter_(-1, idx, 1.0)
