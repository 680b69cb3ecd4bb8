"""Straight-through, Gumbel-softmax (soft and hard) and ReinMax.

All run in the class-first ``(K, N)`` layout of :mod:`._sampling` with hand-written
backward passes, so they are as fast as the ReDGE sampler they are compared with.
"""

from __future__ import annotations

import torch

from samplegrad.categorical._checks import check_logits, check_tau, compute_dtype
from samplegrad.categorical._sampling import (
    from_kn,
    sample_one_hot_kn,
    softmax_kn,
    softmax_vjp_kn,
    to_kn,
)


class _SoftmaxST(torch.autograd.Function):
    """``(K, N)`` scores ``z`` -> ``softmax(z)``, or a one-hot ``hard`` carrying its gradient.

    ``hard`` is ``None`` (soft output), ``"sample"`` (``h ~ Cat(softmax(z))``) or a given
    one-hot tensor. Saves only the softmax.
    """

    @staticmethod
    def forward(ctx, z, hard):
        p = softmax_kn(z.detach())
        ctx.save_for_backward(p)
        if hard is None:
            return p
        return sample_one_hot_kn(p) if isinstance(hard, str) else hard

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        return softmax_vjp_kn(p, g.contiguous()), None


def straight_through(logits: torch.Tensor, hard: bool = True) -> torch.Tensor:
    """Straight-Through (Bengio et al. 2013): ``h ~ Cat(pi)``, gradient through ``pi``.

    ``logits``: ``(*batch, K)``. Returns ``h + pi - pi.detach()`` (``pi`` when ``hard=False``).
    """
    check_logits(logits)
    out = _SoftmaxST.apply(to_kn(logits.to(compute_dtype(logits))), "sample" if hard else None)
    return from_kn(out, logits.shape).to(logits.dtype)


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False) -> torch.Tensor:
    """Gumbel-softmax / Concrete (Jang et al. 2017; Maddison et al. 2017).

    ``softmax((logits + g) / tau)`` with ``g`` standard Gumbel; ``hard=True`` returns the
    argmax one-hot with the soft sample's gradient (straight-through Gumbel). Defaults match
    ``torch.nn.functional.gumbel_softmax``. ``logits``: ``(*batch, K)``.
    """
    check_logits(logits)
    tau = check_tau(tau)
    dt = compute_dtype(logits)
    z = to_kn(logits.to(dt))
    u = torch.rand(z.shape, dtype=dt, device=z.device).clamp_(min=torch.finfo(dt).tiny)
    perturbed = z - u.log_().neg_().log_()  # logits + Gumbel noise
    hard_kn = None
    if hard:  # argmax of logits + Gumbel (exactly Cat(pi)), as a one-hot
        hard_kn = (perturbed == perturbed.amax(0, keepdim=True)).to(dt)
        hard_kn /= hard_kn.sum(0, keepdim=True)  # ties (probability 0) would split the mass
    out = _SoftmaxST.apply(perturbed / tau, hard_kn)
    return from_kn(out, logits.shape).to(logits.dtype)


class _ReinMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta: torch.Tensor, tau: float):
        theta = theta.detach()
        probs = softmax_kn(theta)
        h = sample_one_hot_kn(probs)
        ctx.save_for_backward(theta, probs, h)
        ctx.tau = tau
        return h

    @staticmethod
    def backward(ctx, g):
        theta, probs, h = ctx.saved_tensors
        # Heun-style second-order correction of straight-through (Liu et al. 2023):
        # grad = 2 J(pi_half)^T g - 1/2 J(pi)^T g, pi_half = (h + softmax(theta / tau)) / 2
        half = 0.5 * (h + softmax_kn(theta / ctx.tau))
        g = g.contiguous()
        grad = 2 * softmax_vjp_kn(half, g)
        grad -= 0.5 * softmax_vjp_kn(probs, g)
        return grad, None


def reinmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = True) -> torch.Tensor:
    """ReinMax (Liu et al. 2023): ``h ~ Cat(pi)`` with a second-order corrected gradient.

    ``logits``: ``(*batch, K)``; ``tau >= 1``. Only hard samples are defined.
    """
    check_logits(logits)
    tau = check_tau(tau, minimum=1.0, inclusive=True)
    if not hard:
        raise ValueError("reinmax is defined for hard samples only; use hard=True")
    dt = compute_dtype(logits)
    h = _ReinMax.apply(to_kn(logits.to(dt)), tau)
    return from_kn(h, logits.shape).to(logits.dtype)
