"""Fast kernels in a class-first layout, random draws, and exact one-hot draws.

PyTorch's CPU reductions and softmax over a short last axis (K ~ 10) are slow; the
estimators move the class axis first, ``(K, N)`` contiguous, where a reduction over classes
is a handful of vectorized elementwise passes. ``to_kn`` / ``from_kn`` convert once per call.

Every random draw happens *outside* the autograd Functions, from the global RNG or a
``generator`` on the inputs' device, so the Functions are deterministic given their inputs:
that is what ``torch.func.vmap(..., randomness="different")`` and ``torch.compile`` need.
The eager kernels work in place on scratch buffers; under ``torch.compile`` and inside
``torch.func`` transforms (:func:`functional_mode`) the same math runs out of place.
"""

from __future__ import annotations

import torch

from samplegrad._validation import _in_functorch_transform
from samplegrad.categorical._checks import check_logits_after


def functional_mode() -> bool:
    """True while ``torch.compile`` traces or inside a ``torch.func`` transform: the
    estimators then use out-of-place ops (no scratch buffers, no ``out=``)."""
    return torch.compiler.is_compiling() or _in_functorch_transform()


def to_kn(x: torch.Tensor) -> torch.Tensor:
    """``(*batch, K)`` -> contiguous ``(K, N)`` with ``N = prod(batch)``."""
    return x.reshape(-1, x.shape[-1]).T.contiguous()


def from_kn(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_kn` for a target ``shape = (*batch, K)`` (contiguous)."""
    return x.T.contiguous().reshape(shape)


@torch.library.custom_op("samplegrad::_rand", mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def _rand_op(ref: torch.Tensor, shape: list[int], normal: bool) -> torch.Tensor:
    """``torch.rand``/``torch.randn`` as an opaque op for ``torch.compile``: inductor's own
    CPU random kernels draw one number per element in scalar code (``randn`` about 15x
    slower than eager here); behind a custom op the compiled graph calls ATen's vectorized
    generator instead (the same numbers as eager mode for the same seed). Tagged
    ``nondeterministic_seeded``, so two draws are never merged."""
    fn = torch.randn if normal else torch.rand
    return fn(shape, dtype=ref.dtype, device=ref.device)


@_rand_op.register_fake
def _(ref: torch.Tensor, shape: list[int], normal: bool) -> torch.Tensor:
    return ref.new_empty(shape)


def _draw(shape, like: torch.Tensor, generator, dtype, normal: bool) -> torch.Tensor:
    dtype = dtype or like.dtype
    if generator is None and torch.compiler.is_compiling() and not _in_functorch_transform():
        ref = like.detach() if like.dtype == dtype else like.new_empty((), dtype=dtype)
        return _rand_op(ref, list(shape), normal)
    fn = torch.randn if normal else torch.rand
    return fn(shape, dtype=dtype, device=like.device, generator=generator)


def uniform(shape, like: torch.Tensor, generator: torch.Generator | None = None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """``U[0, 1)`` of ``shape`` on ``like``'s device (dtype ``like``'s unless given)."""
    return _draw(shape, like, generator, dtype, normal=False)


def normal(shape, like: torch.Tensor, generator: torch.Generator | None = None,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal of ``shape`` on ``like``'s device (dtype ``like``'s unless given)."""
    return _draw(shape, like, generator, dtype, normal=True)


def softmax_kn(z: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 0 of a ``(K, N)`` tensor (stable); differentiable."""
    return torch.softmax(z, 0)


def softmax_vjp_kn(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``J_softmax(p)^T g = p * (g - <g, p>)`` over axis 0 (out of place)."""
    return p * (g - (g * p).sum(0, keepdim=True))


def sample_index_kn(probs: torch.Tensor, u: torch.Tensor,
                    logits_kn: torch.Tensor | None = None,
                    cdf: torch.Tensor | None = None) -> torch.Tensor:
    """Class indices ``(N,)`` of ``Cat(probs[:, n])`` for ``(K, N)`` probabilities, given
    uniforms ``u`` of shape ``(1, N)``.

    Inverse CDF: class k is chosen iff ``cdf[k-1] <= v < cdf[k]`` with ``v = u * total``, so
    a class with probability 0 (``cdf[k] == cdf[k-1]``) is never chosen. With ``logits_kn``
    (the class-first logits ``probs`` came from) and validation on, the totals double as
    the input check: they are finite iff the logits have no NaN, no +inf and no all -inf
    variable (:func:`check_logits_after`). ``cdf``: optional scratch buffer (eager).
    """
    cdf = probs.cumsum(0) if cdf is None else torch.cumsum(probs, 0, out=cdf)
    total = cdf[-1:]
    if logits_kn is not None:
        check_logits_after(total, logits_kn, 0)
    v = torch.minimum(u * total, total * (1 - 4 * torch.finfo(probs.dtype).eps))
    return (cdf <= v).sum(0)


def one_hot_kn(idx: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N,)`` indices -> one-hot ``(K, N)``."""
    return (torch.arange(k, device=idx.device)[:, None] == idx).to(dtype)


def one_hot(idx: torch.Tensor, shape: torch.Size, dtype: torch.dtype,
            fm: bool | None = None) -> torch.Tensor:
    """``(N,)`` indices -> one-hot shaped ``(*batch, K)`` (class axis last)."""
    k = shape[-1]
    if fm or (fm is None and functional_mode()):
        return (idx[:, None] == torch.arange(k, device=idx.device)).to(dtype).reshape(shape)
    out = torch.zeros((idx.shape[0], k), dtype=dtype, device=idx.device)
    return out.scatter_(1, idx[:, None], 1.0).reshape(shape)


def eager_twin(cls: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """An old-style (``forward(ctx, ...)``) copy of a ``setup_context`` Function, for plain
    eager calls: ``Function.apply`` binds default arguments with ``inspect.signature`` on
    every call of a ``setup_context`` Function (about 45 us); the twin runs the same
    forward, setup_context and backward without it. ``torch.func`` needs the original."""
    fwd, setup = cls.forward, cls.setup_context

    class Twin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = fwd(*args)
            setup(ctx, args, out)
            return out

        backward = staticmethod(cls.backward)

    Twin.__name__ = Twin.__qualname__ = cls.__name__ + "Eager"
    return Twin


def sample_one_hot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One-hot draw ``h ~ Cat(probs)`` over the last axis; same shape and dtype as ``probs``."""
    p = to_kn(probs.detach())
    u = uniform((1, p.shape[1]), p, generator)
    return one_hot(sample_index_kn(p, u), probs.shape, probs.dtype)
