"""Straight-through, Gumbel-softmax (soft and hard) and ReinMax.

All run in the class-first ``(K, N)`` layout of :mod:`._sampling` with hand-written
backward passes, so they are as fast as the ReDGE sampler they are compared with. The
autograd Functions have ``setup_context`` and ``generate_vmap_rule`` and take their random
numbers as inputs (drawn outside, from ``generator`` or the global RNG), so they run under
``torch.compile(fullgraph=True)``, ``torch.func.grad`` and ``torch.func.vmap``.
"""

from __future__ import annotations

import torch

from samplegrad.categorical._checks import (
    check_flag,
    check_generator,
    check_logits,
    check_logits_after,
    check_noise,
    check_tau,
    compute_dtype,
)
from samplegrad.categorical._sampling import (
    eager_twin,
    from_kn,
    functional_mode,
    one_hot_kn,
    sample_index_kn,
    softmax_vjp_kn,
    to_kn,
    uniform,
)


def _tempered_softmax(z: torch.Tensor, tau: float, zmax: torch.Tensor | None = None,
                      ) -> torch.Tensor:
    """``softmax(z / tau)`` over axis 0 without overflow: for ``tau < 1`` the max is
    subtracted *before* dividing (``z / tau`` overflows at ``|z|`` near the dtype's max)."""
    if tau == 1.0:
        return torch.softmax(z, 0)
    if tau > 1.0:
        return torch.softmax(z / tau, 0)
    if zmax is None:
        zmax = z.amax(0, keepdim=True)
    return torch.softmax((z - zmax) / tau, 0)


class _SoftmaxST(torch.autograd.Function):
    """``(K, N)`` scores ``z`` -> ``softmax(z / tau)``, or a one-hot carrying its gradient.

    ``mode``: ``"soft"`` (the softmax), ``"argmax"`` (one-hot of ``argmax z``: hard
    Gumbel-softmax) or ``"sample"`` (``h ~ Cat(softmax(z / tau))`` from the uniforms ``u``,
    ``(1, N)``). Outputs ``(out,)`` in soft mode, else ``(out, p)`` (``p`` not
    differentiable); saves only the softmax. The value check of the logits (``x``, the
    class-first logits ``z`` came from; ``None``: ``z`` itself) runs on the softmax
    (:func:`check_logits_after`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z, tau: float, mode: str, u, x):
        x = z if x is None else x  # (dynamo refuses one tensor passed twice)
        if mode == "soft":
            p = _tempered_softmax(z, tau)
            check_logits_after(p, x, 0)
            return (p,)
        if mode == "argmax":
            zmax = z.amax(0, keepdim=True)
            p = _tempered_softmax(z, tau, zmax)
            check_logits_after(p, x, 0)
            h = (z == zmax).to(z.dtype)
            return h.div_(h.sum(0, keepdim=True)), p  # ties (probability 0) split the mass
        p = _tempered_softmax(z, tau)
        return one_hot_kn(sample_index_kn(p, u, x), z.shape[0], z.dtype), p

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, tau, mode, _, _ = inputs
        p = output[0] if mode == "soft" else output[1]
        if mode != "soft":
            ctx.mark_non_differentiable(p)
            ctx.set_materialize_grads(False)
        ctx.save_for_backward(p)
        ctx.tau = tau

    @staticmethod
    def backward(ctx, g, *_):
        (p,) = ctx.saved_tensors
        if g is None:
            return None, None, None, None, None
        grad = softmax_vjp_kn(p, g.contiguous())
        if ctx.tau != 1.0:
            grad = grad / ctx.tau
        return grad, None, None, None, None


_SoftmaxST_EAGER = eager_twin(_SoftmaxST)


def _softmax_st(*args):
    return (_SoftmaxST if functional_mode() else _SoftmaxST_EAGER).apply(*args)


def straight_through(logits: torch.Tensor, hard: bool = True, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Straight-Through (Bengio et al. 2013): ``h ~ Cat(pi)``, gradient through ``pi``.

    ``logits``: ``(*batch, K)``. Returns ``h + pi - pi.detach()`` (``pi`` when ``hard=False``).
    ``generator``: optional ``torch.Generator`` on ``logits``' device for the draw.
    """
    check_logits(logits, values=False)  # values: checked inside, class-first
    hard = check_flag(hard, "hard")
    check_generator(generator, logits.device)
    z = to_kn(logits.to(compute_dtype(logits)))
    u = uniform((1, z.shape[1]), z, generator) if hard else None
    out = _softmax_st(z, 1.0, "sample" if hard else "soft", u, None)[0]
    return from_kn(out, logits.shape).to(logits.dtype)


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, *,
                   noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax / Concrete (Jang et al. 2017; Maddison et al. 2017).

    ``softmax((logits + g) / tau)`` with ``g`` standard Gumbel; ``hard=True`` returns the
    argmax one-hot with the soft sample's gradient (straight-through Gumbel). Defaults match
    ``torch.nn.functional.gumbel_softmax``. ``logits``: ``(*batch, K)``. ``noise``: optional
    standard Gumbel noise shaped like ``logits`` (finite; checked when validation is on);
    ``generator``: optional ``torch.Generator`` on ``logits``' device for drawing it.
    Finite for any finite logits, up to the dtype's largest values.
    """
    check_logits(logits, values=False)  # values: checked inside, class-first
    tau = check_tau(tau)
    hard = check_flag(hard, "hard")
    check_generator(generator, logits.device)
    dt = compute_dtype(logits)
    z = to_kn(logits.to(dt))
    if noise is None:  # logits + Gumbel noise, -log(-log u)
        u = uniform(z.shape, z, generator)
        if functional_mode():
            perturbed = z - (-u.clamp(min=torch.finfo(dt).tiny).log()).log()
        else:
            perturbed = z - u.clamp_(min=torch.finfo(dt).tiny).log_().neg_().log_()
    else:
        check_noise(noise, logits)
        perturbed = z + to_kn(noise.to(dt))
    out = _softmax_st(perturbed, tau, "argmax" if hard else "soft", None, z)[0]
    return from_kn(out, logits.shape).to(logits.dtype)


class _ReinMax(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, tau: float, u):
        probs = torch.softmax(theta, 0)
        h = one_hot_kn(sample_index_kn(probs, u, theta), theta.shape[0], theta.dtype)
        return h, probs

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, tau, _ = inputs
        h, probs = output
        ctx.mark_non_differentiable(probs)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(theta, probs, h)
        ctx.tau = tau

    @staticmethod
    def backward(ctx, g, _g_probs):
        theta, probs, h = ctx.saved_tensors
        if g is None:
            return None, None, None
        # Heun-style second-order correction of straight-through (Liu et al. 2023):
        # grad = 2 J(pi_half)^T g - 1/2 J(pi)^T g, pi_half = (h + softmax(theta / tau)) / 2
        half = 0.5 * (h + _tempered_softmax(theta, ctx.tau))
        g = g.contiguous()
        return 2 * softmax_vjp_kn(half, g) - 0.5 * softmax_vjp_kn(probs, g), None, None


_ReinMax_EAGER = eager_twin(_ReinMax)


def reinmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = True, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """ReinMax (Liu et al. 2023): ``h ~ Cat(pi)`` with a second-order corrected gradient.

    ``logits``: ``(*batch, K)``; ``tau >= 1``. Only hard samples are defined.
    ``generator``: optional ``torch.Generator`` on ``logits``' device for the draw.
    """
    check_logits(logits, values=False)  # values: checked inside, class-first
    tau = check_tau(tau, minimum=1.0, inclusive=True)
    if not check_flag(hard, "hard"):
        raise ValueError("hard: reinmax is defined for hard samples only; use hard=True")
    check_generator(generator, logits.device)
    dt = compute_dtype(logits)
    theta = to_kn(logits.to(dt))
    fn = _ReinMax if functional_mode() else _ReinMax_EAGER
    h = fn.apply(theta, tau, uniform((1, theta.shape[1]), theta, generator))[0]
    return from_kn(h, logits.shape).to(logits.dtype)
