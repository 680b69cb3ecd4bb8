"""Straight-through, Gumbel-softmax (soft and hard) and ReinMax."""

from __future__ import annotations

import torch

from samplegrad.categorical._checks import check_logits, check_tau, compute_dtype
from samplegrad.categorical._sampling import sample_one_hot


def straight_through(logits: torch.Tensor, hard: bool = True) -> torch.Tensor:
    """Straight-Through (Bengio et al. 2013): ``h ~ Cat(pi)``, gradient through ``pi``.

    ``logits``: ``(*batch, K)``. Returns ``h + pi - pi.detach()`` (``pi`` when ``hard=False``).
    """
    check_logits(logits)
    probs = torch.softmax(logits.to(compute_dtype(logits)), -1).to(logits.dtype)
    if not hard:
        return probs
    h = sample_one_hot(probs.detach().to(compute_dtype(logits))).to(logits.dtype)
    return h + (probs - probs.detach())


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False) -> torch.Tensor:
    """Gumbel-softmax / Concrete (Jang et al. 2017; Maddison et al. 2017).

    ``softmax((logits + g) / tau)`` with ``g`` standard Gumbel; ``hard=True`` returns the
    argmax one-hot with the soft sample's gradient (straight-through Gumbel). Defaults match
    ``torch.nn.functional.gumbel_softmax``. ``logits``: ``(*batch, K)``.
    """
    check_logits(logits)
    tau = check_tau(tau)
    dt = compute_dtype(logits)
    x = logits.to(dt)
    u = torch.rand(x.shape, dtype=dt, device=x.device).clamp_(min=torch.finfo(dt).tiny)
    gumbels = -torch.log(-torch.log(u))
    soft = torch.softmax((x + gumbels) / tau, -1)
    if hard:
        # argmax of logits + gumbels (not of soft, which can tie at 0 for tiny tau)
        idx = (x.detach() + gumbels).argmax(-1, keepdim=True)
        h = torch.zeros_like(soft).scatter_(-1, idx, 1.0)
        out = h + (soft - soft.detach())
    else:
        out = soft
    return out.to(logits.dtype)


class _ReinMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, tau: float):
        theta = logits.detach().to(compute_dtype(logits))
        probs = torch.softmax(theta, -1)
        h = sample_one_hot(probs)
        ctx.save_for_backward(theta, probs, h)
        ctx.tau, ctx.dtype = tau, logits.dtype
        return h.to(logits.dtype)

    @staticmethod
    def backward(ctx, g):
        theta, probs, h = ctx.saved_tensors
        g = g.to(theta.dtype)
        # Heun-style second-order correction of straight-through (Liu et al. 2023):
        # grad = 2 J(pi_half)^T g - 1/2 J(pi)^T g, pi_half = (h + softmax(theta / tau)) / 2
        half = 0.5 * (h + torch.softmax(theta / ctx.tau, -1))
        grad = 2 * half * (g - (g * half).sum(-1, keepdim=True))
        grad -= 0.5 * probs * (g - (g * probs).sum(-1, keepdim=True))
        return grad.to(ctx.dtype), None


def reinmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = True) -> torch.Tensor:
    """ReinMax (Liu et al. 2023): ``h ~ Cat(pi)`` with a second-order corrected gradient.

    ``logits``: ``(*batch, K)``; ``tau >= 1``. Only hard samples are defined.
    """
    check_logits(logits)
    tau = check_tau(tau, minimum=1.0, inclusive=True)
    if not hard:
        raise ValueError("reinmax is defined for hard samples only; use hard=True")
    return _ReinMax.apply(logits, tau)
