"""Fast kernels in a class-first layout, and exact one-hot draws.

PyTorch's CPU reductions over a short last axis (K ~ 10) are slow; the estimators move the
class axis first, ``(K, N)`` contiguous, where a reduction over classes is a handful of
vectorized elementwise passes. ``to_kn`` / ``from_kn`` convert once per call.
"""

from __future__ import annotations

import torch


def to_kn(x: torch.Tensor) -> torch.Tensor:
    """``(*batch, K)`` -> contiguous ``(K, N)`` with ``N = prod(batch)``."""
    return x.reshape(-1, x.shape[-1]).T.contiguous()


def from_kn(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_kn` for a target ``shape = (*batch, K)`` (contiguous)."""
    return x.T.contiguous().reshape(shape)


def softmax_kn(z: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 0 of a ``(K, N)`` tensor (stable: max subtracted); differentiable."""
    if torch.is_grad_enabled() and z.requires_grad:
        e = (z - z.amax(0, keepdim=True).detach()).exp()
        return e / e.sum(0, keepdim=True)
    return softmax_kn_(z.clone())


def softmax_kn_(z: torch.Tensor) -> torch.Tensor:
    """In-place softmax over axis 0 of ``(K, N)`` (no graph); returns ``z``."""
    z.sub_(z.amax(0, keepdim=True)).exp_()
    return z.div_(z.sum(0, keepdim=True))


def softmax_vjp_kn(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``J_softmax(p)^T g = p * (g - <g, p>)`` over axis 0."""
    return p * (g - (g * p).sum(0, keepdim=True))


def softmax_vjp_kn_(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """In-place :func:`softmax_vjp_kn`: overwrites and returns ``g``."""
    return g.sub_((g * p).sum(0, keepdim=True)).mul_(p)


def sample_index_kn(probs: torch.Tensor, generator: torch.Generator | None = None,
                    ) -> torch.Tensor:
    """Class indices ``(N,)`` drawn from ``Cat(probs[:, n])`` for ``(K, N)`` probabilities.

    Inverse CDF: class k is chosen iff ``cdf[k-1] <= v < cdf[k]`` with ``v = u * total``, so
    a class with probability 0 (``cdf[k] == cdf[k-1]``) is never chosen.
    """
    cdf = probs.cumsum(0)
    total = cdf[-1:]
    u = torch.rand(total.shape, dtype=probs.dtype, device=probs.device, generator=generator)
    v = torch.minimum(u.mul_(total), total * (1 - 4 * torch.finfo(probs.dtype).eps))
    return (cdf <= v).sum(0)


def one_hot_kn(idx: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N,)`` indices -> one-hot ``(K, N)``."""
    return (torch.arange(k, device=idx.device)[:, None] == idx).to(dtype)


def one_hot(idx: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``(N,)`` indices -> one-hot shaped ``(*batch, K)`` (class axis last)."""
    k = shape[-1]
    return (idx[:, None] == torch.arange(k, device=idx.device)).to(dtype).reshape(shape)


def sample_one_hot_kn(probs: torch.Tensor, generator: torch.Generator | None = None,
                      ) -> torch.Tensor:
    """One-hot draw ``h ~ Cat(probs)`` over axis 0 of ``(K, N)``."""
    return one_hot_kn(sample_index_kn(probs, generator), probs.shape[0], probs.dtype)


def sample_one_hot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One-hot draw ``h ~ Cat(probs)`` over the last axis; same shape and dtype as ``probs``."""
    p = probs.detach()
    return one_hot(sample_index_kn(to_kn(p), generator), p.shape, p.dtype)
