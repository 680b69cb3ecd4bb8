"""Gumbel-Rao: the straight-through Gumbel-softmax gradient, Rao-Blackwellized over the
Gumbel noise given the sampled class (Paulus et al. 2021).

The forward value is an exact one-hot ``D ~ Cat(softmax(logits))``; the backward pass is the
mean over ``n_rao`` draws of the Gumbel noise *conditional on* ``argmax(logits + g) = D`` of
the Jacobian of ``softmax((logits + g) / tau)``. Same bias as straight-through Gumbel-softmax
at the same ``tau``, less variance. Works under ``torch.compile(fullgraph=True)``,
``torch.func.grad`` and ``torch.func.vmap`` (all draws happen outside the autograd
Function). Math: docs/methods.md#gumbel-rao.
"""

from __future__ import annotations

import torch

from samplegrad.categorical._checks import (
    _integer,
    check_generator,
    check_logits,
    check_tau,
    compute_dtype,
)
from samplegrad.categorical._sampling import (
    eager_twin,
    from_kn,
    functional_mode,
    one_hot_kn,
    sample_index_kn,
    to_kn,
    uniform,
)


def conditional_gumbel(logp: torch.Tensor, h: torch.Tensor, v: torch.Tensor,
                       dim: int = -2) -> torch.Tensor:
    """Perturbed log-probabilities ``logp + g`` with ``g`` standard Gumbel *conditioned on*
    ``argmax(logp + g) = D`` (the class of the one-hot ``h``), top-down.

    ``logp``: normalized log-probabilities, class axis ``dim`` (``-inf``: masked class);
    ``h``: one-hot like ``logp``; ``v``: uniforms broadcasting against them (extra leading
    axes: independent draws). The maximum of ``logp + g`` is a standard Gumbel independent
    of the argmax, so the top value is ``-log E_D``; every other class is a Gumbel with
    location ``logp_k`` truncated below it, ``-log(E_k / p_k + E_D)`` (``E = -log v``,
    standard exponentials). Masked classes come out ``-inf``. Differentiable in ``logp``
    (REBAR's ``z~``).
    """
    tiny = torch.finfo(v.dtype).tiny
    log_e = (-(v.clamp(min=tiny).log())).clamp(min=tiny).log()  # log E, E ~ Exp(1)
    top = (log_e * h).sum(dim, keepdim=True)  # log E_D
    rest = -torch.logaddexp(log_e - logp, top)
    return torch.where(h > 0, -top, rest)


def _conditional_gumbel_values(logp: torch.Tensor, h: torch.Tensor,
                               v: torch.Tensor) -> torch.Tensor:
    """:func:`conditional_gumbel` over axis ``-2`` with fewer transcendental ops (two logs
    per element), for values only: ``exp(-logp)`` may overflow to ``inf`` (a class of
    negligible probability), which gives the right ``-inf`` but no usable gradient. In
    place on its own buffers in eager mode."""
    tiny = torch.finfo(v.dtype).tiny
    inv_p = torch.exp(-logp)
    if functional_mode():
        e = (-(v.clamp(min=tiny).log())).clamp(min=tiny)  # E ~ Exp(1)
        e_top = (e * h).sum(-2, keepdim=True)
        rest = -(e * inv_p + e_top).log()
    else:
        e = v.clamp(min=tiny).log_().neg_().clamp_(min=tiny)
        e_top = (e * h).sum(-2, keepdim=True)
        rest = e.mul_(inv_p).add_(e_top).log_().neg_()
    return torch.where(h > 0, -e_top.log(), rest)


class _GumbelRao(torch.autograd.Function):
    """``(K, N)`` logits -> one-hot ``D ~ Cat(softmax)``; backward: the mean over the ``R``
    conditional draws of ``J_softmax(p_r)^T g / tau``, ``p_r = softmax((logits + g_r) / tau)``.
    ``u``: uniforms ``(1, N)`` for ``D``; ``v``: uniforms ``(R, K, N)`` for the noise."""

    generate_vmap_rule = True

    @staticmethod
    def forward(theta, tau: float, u, v):
        probs = torch.softmax(theta, 0)
        h = one_hot_kn(sample_index_kn(probs, u, theta), theta.shape[0], theta.dtype)
        z = _conditional_gumbel_values(torch.log_softmax(theta, 0), h, v)  # (R, K, N)
        zmax = z.amax(-2, keepdim=True)  # the sampled class's value: finite
        p = torch.softmax((z - zmax) / tau, -2)
        return h, p

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, tau, _, _ = inputs
        _, p = output
        ctx.mark_non_differentiable(p)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(p)
        ctx.tau = tau

    @staticmethod
    def backward(ctx, g, _g_p):
        (p,) = ctx.saved_tensors
        if g is None:
            return None, None, None, None
        # mean_r p_r * (g - <g, p_r>) = mean(p) * g - mean_r p_r <g, p_r>: one temporary
        g = g.contiguous()
        t = p * g
        gp = t.sum(-2, keepdim=True)
        t = torch.mul(p, gp) if functional_mode() else torch.mul(p, gp, out=t)
        grad = p.mean(0) * g - t.mean(0)
        return grad / ctx.tau, None, None, None


_GumbelRao_EAGER = eager_twin(_GumbelRao)


def check_n_rao(n_rao: int) -> int:
    return _integer(n_rao, "n_rao", 1)


def gumbel_rao(logits: torch.Tensor, tau: float = 0.5, n_rao: int = 10, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-Rao (Paulus et al. 2021): ``D ~ Cat(softmax(logits))`` forward, and the
    straight-through Gumbel-softmax gradient averaged over ``n_rao`` draws of the Gumbel
    noise given ``D``.

    ``logits``: ``(*batch, K)``; returns the one-hot ``(*batch, K)`` (dtype of ``logits``).
    ``tau > 0``: the relaxation's temperature (the bias of straight-through Gumbel-softmax
    at this ``tau``; ``n_rao`` only lowers the variance). Cost: ``n_rao`` softmaxes per
    variable, memory ``n_rao * logits.numel()``. ``generator``: optional
    ``torch.Generator`` on ``logits``' device for the draws.
    """
    check_logits(logits, values=False)  # values: checked inside, class-first
    tau = check_tau(tau)
    n_rao = check_n_rao(n_rao)
    check_generator(generator, logits.device)
    theta = to_kn(logits.to(compute_dtype(logits)))
    u = uniform((1, theta.shape[1]), theta, generator)
    v = uniform((n_rao, *theta.shape), theta, generator)
    fn = _GumbelRao if functional_mode() else _GumbelRao_EAGER
    h = fn.apply(theta, tau, u, v)[0]
    return from_kn(h, logits.shape).to(logits.dtype)
