"""The unordered-set estimator (Kool, van Hoof & Welling 2020): ``k`` distinct configurations
drawn *without replacement* from the joint distribution, weighted so that the estimate is
unbiased, with the estimator's own built-in baseline.

The joint of independent categorical variables is sampled without replacement by Gumbel-top-k
over all configurations, done exactly and without enumerating them by stochastic beam search
(one variable at a time, ``k`` partial configurations kept, each child's perturbed
log-probability conditioned on its parent's). The set probabilities the weights need are
sums over the ``k!`` orders of the set, computed in log space by dynamic programming over
its ``2^k`` subsets (``n_samples <= 8``). The math
is in ``docs/methods.md`` (section ``unordered-set``).
"""

from __future__ import annotations

import functools
import math

import torch

from samplegrad.categorical._checks import (
    Objective,
    _integer,
    check_callable,
    check_generator,
    check_logits,
    check_objective_values,
    compute_dtype,
)
from samplegrad.categorical._sampling import uniform

MAX_SET = 8


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0`` (``-inf`` at 0), stable."""
    x = x.clamp_max(0)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _gumbel(shape, like: torch.Tensor, generator) -> torch.Tensor:
    tiny = torch.finfo(like.dtype).tiny
    u = uniform(shape, like, generator).clamp(tiny, 1 - torch.finfo(like.dtype).eps)
    return -torch.log(-torch.log(u))


def _beam_search(logp: torch.Tensor, k: int, generator):
    """Gumbel-top-``k`` of the joint of independent variables by stochastic beam search.

    ``logp``: ``(E, V, K)`` log-probabilities (``E`` independent elements of ``V`` variables).
    Returns class indices ``(E, k, V)``, the configurations' log-probabilities ``(E, k)`` and
    validity ``(E, k)`` (False where the element has fewer than ``k`` configurations of
    positive probability: those rows repeat row 0 and carry no weight).
    """
    e, nv, kk = logp.shape
    neg = torch.tensor(-math.inf, dtype=logp.dtype, device=logp.device)
    first = torch.arange(k, device=logp.device) == 0
    # one root (the empty configuration), k - 1 empty beam slots
    phi = torch.where(first, 0.0, neg).to(logp.dtype).expand(e, k)
    # perturbed log-probabilities: the root's Gumbel maximum is unconstrained
    g = torch.where(first, _gumbel((e, 1), logp, generator), neg)
    idx = torch.zeros(e, k, 0, dtype=torch.long, device=logp.device)
    for v in range(nv):
        phi_c = phi[:, :, None] + logp[:, None, v, :]  # (E, k, K)
        gt = phi_c + _gumbel(phi_c.shape, logp, generator)
        z = gt.amax(-1, keepdim=True)
        # the children's maximum is conditioned to equal the parent's perturbed value T:
        # G = -log(exp(-T) - exp(-Z) + exp(-G~)), in log space
        t = g[:, :, None]
        inner = -gt + _log1mexp(gt - z)  # log(exp(-G~) - exp(-Z)); -inf for the argmax
        gc = -torch.logaddexp(-t, inner)
        ok = torch.isfinite(phi_c) & torch.isfinite(t)
        gc = torch.where(ok, gc, neg)
        top = gc.reshape(e, -1).topk(k, -1)
        parent, cls = top.indices // kk, top.indices % kk
        phi = phi_c.reshape(e, -1).gather(1, top.indices)
        g = top.values
        idx = torch.cat([idx.gather(1, parent[:, :, None].expand(-1, -1, v)),
                         cls[:, :, None]], -1)
    valid = torch.isfinite(phi)
    idx = torch.where(valid[:, :, None], idx, idx[:, :1])
    return idx, torch.where(valid, phi, phi[:, :1]), valid


@functools.lru_cache(maxsize=64)
def _index_table(kind: str, k: int, device: torch.device) -> torch.Tensor:
    """Cached index tables: ``"drop1"``: item ``i`` left out ``(k, k-1)``; ``"drop2"``: items
    ``i, j`` left out ``(k, k, k-2)`` (for ``i == j`` one more item is dropped; those entries
    are unused)."""
    if kind == "drop1":
        rows = [[j for j in range(k) if j != i] for i in range(k)]
        return torch.tensor(rows, dtype=torch.long, device=device).reshape(k, k - 1)
    rows = [[t for t in range(k) if t not in (i, j)][:k - 2] for i in range(k) for j in range(k)]
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(k, k, k - 2)


@functools.lru_cache(maxsize=64)
def _subsets(m: int, device: torch.device):
    """The ``2^m`` subsets of ``m`` items, ordered by size (the empty set first, the full set
    last): membership ``(2^m, m)`` and, per size ``c = 1..m``, the position of each subset of
    that size with item ``i`` removed ``(L_c, m)`` and whether item ``i`` is in it
    ``(L_c, m)``."""
    order = sorted(range(1 << m), key=lambda s: (bin(s).count("1"), s))
    pos = {s: n for n, s in enumerate(order)}
    bits = [[bool(s >> i & 1) for i in range(m)] for s in order]
    layers = []
    for c in range(1, m + 1):
        masks = [s for s in order if bin(s).count("1") == c]
        # (an item not in the subset points at the empty set: masked out, any computed entry)
        layers.append((torch.tensor([[pos[s & ~(1 << i)] if s >> i & 1 else 0
                                      for i in range(m)] for s in masks],
                                    dtype=torch.long, device=device),
                       torch.tensor([bits[pos[s]] for s in masks], device=device)))
    return torch.tensor(bits, device=device), layers


def _log_set_prob(lp: torch.Tensor, valid: torch.Tensor, excl: torch.Tensor) -> torch.Tensor:
    """Log-probability that sampling without replacement from the domain minus an excluded
    mass ``excl`` first draws exactly the valid items of each set, in any order.

    ``lp``: ``(..., m)`` log-probabilities (under the full distribution), ``valid`` ``(..., m)``
    (invalid items are transparent), ``excl`` ``(...)``. The sum over the ``m!`` orders of
    ``prod_i p_i / (1 - excl - sum_{j<i} p_j)`` is built by dynamic programming over the
    ``2^m`` subsets (a subset's value sums, over its last item, the value without that item
    times the item's factor), then divided by ``m! / m_valid!`` (each order of the valid
    items appears that many times among the orders of all ``m``). Cost ``O(2^m m)``.
    """
    m = lp.shape[-1]
    if m == 0:
        return torch.zeros_like(excl)
    bits, layers = _subsets(m, lp.device)
    p = torch.where(valid, lp.exp(), torch.zeros_like(lp))
    mass = p @ bits.T.to(lp.dtype)  # (..., 2^m): probability of each subset's items
    rem = (1 - excl[..., None] - mass).clamp_min(torch.finfo(lp.dtype).tiny)
    # log factor of drawing item i right after the items of a subset: (..., 2^m, m)
    lf = torch.where(valid[..., None, :], lp[..., None, :] - torch.log(rem)[..., :, None],
                     torch.zeros((), dtype=lp.dtype, device=lp.device))
    logdp = torch.zeros_like(mass[..., :1])  # the empty set; grows one size at a time
    col = torch.arange(m, device=lp.device)
    neg = torch.tensor(-math.inf, dtype=lp.dtype, device=lp.device)
    for prev, has in layers:
        cand = torch.where(has, logdp[..., prev] + lf[..., prev, col], neg)
        logdp = torch.cat([logdp, torch.logsumexp(cand, -1)], -1)
    mv = valid.sum(-1).to(lp.dtype)
    return logdp[..., -1] - math.lgamma(m + 1) + torch.lgamma(mv + 1)


def _drop(x: torch.Tensor, k: int, n_drop: int) -> torch.Tensor:
    """``x (..., k)`` -> ``(..., k, [k,] k - n_drop)``: the set without item i (n_drop=1) or
    without items i and j (n_drop=2; for i == j the set without i and one other item,
    unused)."""
    return x[..., _index_table(f"drop{n_drop}", k, x.device)]


def _set_weights(lp: torch.Tensor, valid: torch.Tensor):
    """For sets ``(E, k)`` of log-probabilities: the estimator weights ``p(s) R(S, s)`` (E, k)
    and the baseline matrix ``B (E, k, k)`` with ``b_s = sum_s' B[s, s'] f(s')``."""
    e, k = lp.shape
    p = torch.where(valid, lp.exp(), torch.zeros_like(lp))
    zero = torch.zeros(e, dtype=lp.dtype, device=lp.device)
    log_s = _log_set_prob(lp, valid, zero)  # (E,)
    log_s1 = _log_set_prob(_drop(lp, k, 1), _drop(valid, k, 1), p)  # (E, k): without s
    w = torch.where(valid, (lp + log_s1 - log_s[:, None]).exp(), torch.zeros_like(lp))
    if k >= 2:  # (always: k >= 2)
        excl2 = p[:, :, None] + p[:, None, :]
        log_s2 = _log_set_prob(_drop(lp, k, 2), _drop(valid, k, 2), excl2)  # (E, k, k)
        # p(s') R^{D \ s}(S, s') for s' != s, in log space (p(s') may underflow)
        off = (lp[:, None, :] + log_s2 - log_s1[:, :, None]).exp()
    else:
        off = torch.zeros(e, k, k, dtype=lp.dtype, device=lp.device)
    eye = torch.eye(k, dtype=torch.bool, device=lp.device)
    both = valid[:, :, None] & valid[:, None, :]
    bmat = torch.where(eye, p[:, None, :].expand(e, k, k), off)
    bmat = torch.where(both, bmat, torch.zeros_like(bmat))
    return w, bmat


def unordered_set(f: Objective, logits: torch.Tensor, n_samples: int = 4, batch_dims: int = 0,
                  *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unordered-set estimator with its built-in baseline (Kool et al. 2020), unbiased.

    ``n_samples = k`` (2..8) *distinct* configurations are drawn without replacement from
    the joint distribution of the variables of each element (Gumbel-top-k by stochastic
    beam search), and ``f`` sees them as one-hots ``(k, *logits.shape)``. The gradient is
    ``sum_s p(s) R(S, s) (f(s) - b_s) grad log p(s)`` with ``R(S, s)`` the probability of the
    rest of the set after ``s`` divided by the set's probability, and ``b_s`` the set's
    estimate of ``E[f]`` given that ``s`` is in it. The value is ``sum_s p(s) R(S, s) f(s)``.

    ``batch_dims``: how many leading dims of ``logits`` index independent elements (e.g. the
    datapoints of a minibatch), each with its own set of ``k`` configurations of its own
    variables; ``f`` must then return per-element values ``(k, *logits.shape[:batch_dims])``
    (more leading dims are summed within the element). With ``batch_dims=0`` the set is over
    the joint of every variable and per-element values are summed. When an element has
    fewer than ``k`` configurations of positive probability, its set is all of them (the
    estimate is exact) and the spare rows repeat one with zero weight. Cost: ``k``
    evaluations of ``f``, ``V`` sequential beam steps of ``O(k K)`` for ``V`` variables per
    element, and ``O(2^k k^3)`` per element for the set probabilities.
    """
    check_callable(f)
    check_logits(logits)
    k = _integer(n_samples, "n_samples", 2)
    if k > MAX_SET:
        raise ValueError(f"n_samples: the unordered-set estimator's set probabilities cost"
                         f" O(2^n_samples) per element;"
                         f" must be an integer in [2, {MAX_SET}], got {k}")
    nb = _integer(batch_dims, "batch_dims", 0)
    if nb > logits.dim() - 1:
        raise ValueError(f"batch_dims: must be at most logits.dim() - 1 = {logits.dim() - 1}"
                         f" (the batch dims), got {nb}")
    check_generator(generator, logits.device)
    shape, kk = logits.shape, logits.shape[-1]
    n_el = math.prod(shape[:nb])
    dt = compute_dtype(logits)
    wdt = torch.float64 if logits.device.type in ("cpu", "cuda") else dt
    logp = torch.log_softmax(logits.to(dt), -1)
    lp_d = logp.detach().to(wdt).reshape(n_el, -1, kk)
    idx, lp_set, valid = _beam_search(lp_d, k, generator)  # (E, k, V), (E, k), (E, k)
    eye = torch.eye(kk, dtype=logits.dtype, device=logits.device)
    x = eye[idx.transpose(0, 1)].reshape(k, *shape)  # (k, E, V, K) -> (k, *shape)
    fx = f(x)
    j = check_objective_values(fx, k, shape)
    if j < nb:
        raise ValueError(f"f: with batch_dims={nb} the unordered-set estimator needs one value "
                         f"per sample and element, shape {(k, *shape[:nb])}; got "
                         f"{tuple(fx.shape)}")
    fe = fx.sum(tuple(range(1 + nb, 1 + j))) if j > nb else fx  # (k, *shape[:nb])
    fe = fe.reshape(k, n_el)
    w, bmat = _set_weights(lp_set, valid)  # (E, k), (E, k, k)
    fv = fe.detach().to(wdt).T  # (E, k)
    base = (bmat * fv[:, None, :]).sum(-1)  # (E, k)
    adv = w * (fv - base)
    # log p(s) with its graph: sum over the element's variables of log p(class)
    lps = logp.reshape(n_el, -1, kk)[:, None].expand(n_el, k, -1, kk)
    lps = torch.where(valid, lps.gather(-1, idx[..., None]).squeeze(-1).sum(-1),
                      torch.zeros((), dtype=dt, device=logits.device))
    value = (w.to(dt) * fe.T.to(dt)).sum()
    lin = (adv.to(dt) * lps).sum()
    return (value + lin - lin.detach()).to(logits.dtype)
