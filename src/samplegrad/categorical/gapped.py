"""Gapped Straight-Through (GST, Fan et al. 2022): straight-through with a deterministic
perturbation of the logits in place of Gumbel noise.

Given the hard sample ``D ~ Cat(softmax(logits))``, the backward pass uses the softmax of
logits moved (by constants, no gradient through the move) so that class ``D`` sits at the
maximum and every other class at least ``gap`` below it. Like straight-through
Gumbel-softmax, the relaxed sample's argmax is ``D`` and it gets sharper as ``tau`` falls,
but no noise is drawn for it: one uniform per variable, no resampling. Math: docs/methods.md#gst.
"""

from __future__ import annotations

import torch

from samplegrad._config import check_real
from samplegrad.categorical._checks import (
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
    softmax_vjp_kn,
    to_kn,
    uniform,
)


class _Gapped(torch.autograd.Function):
    """``(K, N)`` logits -> one-hot ``D``; backward ``J_softmax(q)^T g / tau`` at
    ``q = softmax(gapped / tau)``, ``gapped = where(D, max, min(logits, max - gap))``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(theta, tau: float, gap: float, u):
        probs = torch.softmax(theta, 0)
        h = one_hot_kn(sample_index_kn(probs, u, theta), theta.shape[0], theta.dtype)
        top = theta.amax(0, keepdim=True)
        gapped = torch.where(h > 0, top, torch.minimum(theta, top - gap))
        q = torch.softmax((gapped - top) / tau, 0)
        return h, q

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, tau, _, _ = inputs
        _, q = output
        ctx.mark_non_differentiable(q)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q)
        ctx.tau = tau

    @staticmethod
    def backward(ctx, g, _g_q):
        (q,) = ctx.saved_tensors
        if g is None:
            return None, None, None, None
        return softmax_vjp_kn(q, g.contiguous()) / ctx.tau, None, None, None


_Gapped_EAGER = eager_twin(_Gapped)


def gst(logits: torch.Tensor, tau: float = 0.5, gap: float = 1.0, *,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Gapped Straight-Through (Fan et al. 2022): ``D ~ Cat(softmax(logits))`` forward; the
    gradient of ``softmax((logits + m) / tau)`` backward, where the constant move ``m`` lifts
    class ``D`` to the largest logit and pushes every other class within ``gap`` of it down
    to ``max - gap``.

    ``logits``: ``(*batch, K)``; returns the one-hot ``(*batch, K)``. ``tau > 0``; ``gap >=
    0`` (``gap=0`` keeps only the lift of ``D``). Cost: one softmax per variable, like
    straight-through. ``generator``: optional ``torch.Generator`` on ``logits``' device.
    """
    check_logits(logits, values=False)  # values: checked inside, class-first
    tau = check_tau(tau)
    gap = check_real(gap, "gap", ge=0.0)
    check_generator(generator, logits.device)
    theta = to_kn(logits.to(compute_dtype(logits)))
    fn = _Gapped if functional_mode() else _Gapped_EAGER
    h = fn.apply(theta, tau, gap, uniform((1, theta.shape[1]), theta, generator))[0]
    return from_kn(h, logits.shape).to(logits.dtype)
