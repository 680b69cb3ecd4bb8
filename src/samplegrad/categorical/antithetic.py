"""Antithetic score-function estimators: ARM and DisARM for binary variables, and ARMS, the
multi-sample antithetic estimator for categorical variables.

All three are unbiased and need only ``f``'s values. They draw *coupled* samples (whose
marginals are exactly the model's distribution, but which are negatively correlated so that
they disagree more often than independent draws) and correct for the coupling, which keeps
the estimate unbiased. Each returns a surrogate loss: its value is the mean of ``f`` over the
draws and its ``backward()`` leaves the gradient estimate in ``logits.grad`` (plus the
pathwise gradient of ``f``'s own parameters). The math is in ``docs/methods.md`` (sections
``arm-disarm`` and ``arms``).
"""

from __future__ import annotations

import torch

from samplegrad._validation import validation_enabled
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

# --------------------------------------------------------------------------- shared helpers

def _check_even_samples(n_samples: int) -> int:
    n = _integer(n_samples, "n_samples", 2)
    if n % 2:
        raise ValueError(f"n_samples: must be an even integer >= 2 (antithetic pairs, two "
                         f"evaluations of f each), got {n}")
    return n


def _check_bernoulli_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"logits: must be floating point, got {logits.dtype}")
    if validation_enabled() and logits.numel() and bool(torch.isnan(logits.detach()).any()):
        raise ValueError("logits: contains NaN")


def _per_variable(fx: torch.Tensor, var_shape: torch.Size) -> torch.Tensor:
    """``(S, *var_shape[:j])`` values -> ``(S, *var_shape[:j], 1, ..., 1)`` broadcastable
    against ``(S, *var_shape)``: each variable is credited with its own element's value."""
    return fx.reshape(*fx.shape, *([1] * (1 + len(var_shape) - fx.dim())))


def _finite(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its infinities replaced by 0 (differentiable where finite): masked and
    saturated logits get an exactly zero gradient and keep ``0 * inf`` out of sums."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


# ------------------------------------------------------------------------------ ARM, DisARM

def _binary_pair(phi: torch.Tensor, n_pairs: int, generator):
    """One uniform per pair and variable; ``b = 1[u < sigma(phi)]`` and its antithetic twin
    ``b~ = 1[1 - u < sigma(phi)]``. Returns ``(u, b, b~)`` shaped ``(n_pairs, *phi.shape)``."""
    u = uniform((n_pairs, *phi.shape), phi, generator)
    p = torch.sigmoid(phi)
    return u, (u < p).to(phi.dtype), ((1 - u) < p).to(phi.dtype)


def _binary_estimator(f: Objective, logits: torch.Tensor, n_samples: int, generator,
                      disarm: bool, one_hot: bool) -> torch.Tensor:
    """ARM/DisARM on Bernoulli logits ``phi`` (``logits`` itself, or for ``one_hot`` the
    difference of the two classes' logits; ``f`` then sees two-class one-hots)."""
    check_callable(f)
    n_samples = _check_even_samples(n_samples)
    check_generator(generator, logits.device)
    dt = compute_dtype(logits)
    if one_hot:
        phi = logits[..., 1].to(dt) - logits[..., 0].to(dt)
    else:
        phi = logits.to(dt)
    m = n_samples // 2
    phi_d = phi.detach()
    u, b, bt = _binary_pair(phi_d, m, generator)
    x = torch.cat([b, bt])  # (2m, *shape): the m draws, then their m antithetic twins
    if one_hot:
        x = torch.stack([1 - x, x], -1)
    fx = f(x.to(logits.dtype))
    var_shape = logits.shape if one_hot else (*logits.shape, 2)
    check_objective_values(fx, n_samples, var_shape)
    if not one_hot and fx.dim() - 1 > logits.dim():
        raise ValueError(f"f: must return at most per-variable values {(n_samples,)}"
                         f"{tuple(logits.shape)}, got {tuple(fx.shape)}")
    v = _per_variable(fx.detach().to(dt), phi.shape)
    fb, fbt = v[:m], v[m:]
    if disarm:
        # 1/2 (f(b) - f(b~)) (-1)^{b~} 1[b != b~] sigma(|phi|)
        sign = 1 - 2 * bt
        g = 0.5 * (fb - fbt) * sign * (b != bt).to(dt) * torch.sigmoid(phi_d.abs())
    else:
        # (f(b~) - f(b)) (u - 1/2)
        g = (fbt - fb) * (u - 0.5)
    g = torch.where(torch.isfinite(phi_d), g.mean(0), torch.zeros_like(phi_d))
    lin = (g * _finite(phi)).sum()
    return fx.mean(0).sum() + (lin - lin.detach()).to(logits.dtype)


def arm(f: Objective, logits: torch.Tensor, n_samples: int = 2, *,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """ARM (Yin & Zhou 2019) for independent Bernoulli variables with logits ``logits``
    (any shape ``(...)``, ``P(b = 1) = sigmoid(logits)``).

    ``f`` takes binary samples ``(n_samples, *logits.shape)`` (values 0/1, logits' dtype) and
    returns ``(n_samples,)`` or per-element values ``(n_samples, *logits.shape[:j])``.
    ``n_samples`` (even, >= 2) is the number of evaluations of ``f``: ``n_samples / 2``
    antithetic pairs ``b = 1[u < sigma(phi)]``, ``b~ = 1[u > sigma(-phi)]``, each giving
    ``(f(b~) - f(b)) (u - 1/2)``. Unbiased. Infinite logits are deterministic variables
    (zero gradient). ``generator``: optional ``torch.Generator`` on ``logits``' device.
    """
    _check_bernoulli_logits(logits)
    return _binary_estimator(f, logits, n_samples, generator, disarm=False, one_hot=False)


def disarm(f: Objective, logits: torch.Tensor, n_samples: int = 2, *,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """DisARM (Dong, Mnih & Tucker 2020; Yin et al. 2020 "U2G") for Bernoulli logits, as
    :func:`arm` but each pair gives ``1/2 (f(b) - f(b~)) (-1)^{b~} 1[b != b~] sigma(|phi|)``:
    ARM's estimate averaged over the uniform given the pair ``(b, b~)`` (Rao-Blackwellized),
    so its variance is never larger. Unbiased; ``n_samples`` even >= 2."""
    _check_bernoulli_logits(logits)
    return _binary_estimator(f, logits, n_samples, generator, disarm=True, one_hot=False)


def _check_two_classes(logits: torch.Tensor) -> None:
    check_logits(logits)
    if logits.shape[-1] != 2:
        raise ValueError(f"logits: ARM/DisARM are for binary variables: the class axis (last "
                         f"dim) must have size 2, got shape {tuple(logits.shape)}; use arms, "
                         f"rloo or unordered_set for K classes")


def arm_categorical(f: Objective, logits: torch.Tensor, n_samples: int = 2, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`arm` for two-class categorical logits ``(*batch, 2)`` (class axis last, the
    registry's ``"arm"``); ``f`` takes one-hots ``(n_samples, *batch, 2)``. K != 2 is a
    ``ValueError`` naming ``logits``."""
    _check_two_classes(logits)
    return _binary_estimator(f, logits, n_samples, generator, disarm=False, one_hot=True)


def disarm_categorical(f: Objective, logits: torch.Tensor, n_samples: int = 2, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`disarm` for two-class categorical logits ``(*batch, 2)`` (the registry's
    ``"disarm"``). K != 2 is a ``ValueError`` naming ``logits``."""
    _check_two_classes(logits)
    return _binary_estimator(f, logits, n_samples, generator, disarm=True, one_hot=True)


# ------------------------------------------------------------------------------------- ARMS

def _weight_dtype(logits: torch.Tensor) -> torch.dtype:
    """The pair probabilities are differences of O(1) numbers: float64 where the device has
    it (CPU, CUDA), else the compute dtype."""
    return torch.float64 if logits.device.type in ("cpu", "cuda") else compute_dtype(logits)


def _copula_uniforms(n: int, cols: int, like: torch.Tensor, generator) -> torch.Tensor:
    """``(n, cols)`` uniforms, each column ``n`` mutually antithetic ones (the Dirichlet copula
    of ARMS): ``d ~ Dirichlet(1, ..., 1)``, ``u_i = 1 - (1 - d_i)^(n - 1)``."""
    e = -torch.log(uniform((n, cols), like, generator).clamp_min(torch.finfo(like.dtype).tiny))
    d = e / e.sum(0, keepdim=True)
    return 1 - (1 - d).clamp_min(0) ** (n - 1)


def _root_tail(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(1 - x)^(1/(n-1))``: the pair survival function below is ``S(x, y) =
    (r(x) + r(y) - 1)_+^(n-1)`` (``P(u_i > x, u_j > y)`` for two of the ``n`` copula
    uniforms)."""
    t = (1 - x).clamp_min(0)
    return t if n == 2 else t ** (1.0 / (n - 1))


def _pair_survival(rx: torch.Tensor, ry: torch.Tensor, n: int) -> torch.Tensor:
    """``S(x, y)`` from ``rx = _root_tail(x)``, ``ry = _root_tail(y)``."""
    t = (rx + ry - 1).clamp_min(0)
    return t if n == 2 else t ** (n - 1)


def arms(f: Objective, logits: torch.Tensor, n_samples: int = 4, *,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """ARMS for categorical variables: ``n_samples`` mutually antithetic draws per variable,
    leave-one-out REINFORCE over all pairs, each pair importance-weighted by
    ``p(a) p(c) / Q(a, c)`` (``Q``: the coupling's probability of the pair) so the estimate
    stays unbiased.

    Coupling: per variable, ``n`` Dirichlet-copula uniforms (Dimitriev & Zhou 2021) are
    turned into classes by the inverse CDF over the classes in a uniformly random cyclic
    order (the rotation gives every pair of distinct classes a positive probability, which
    unbiasedness needs for K > 2). For K = 2 it is ARMS, and with ``n_samples = 2`` DisARM;
    with independent draws it would be RLOO. ``f`` as in :func:`samplegrad.rloo` (one value
    per sample, or per leading batch element). ``n_samples >= 2``. Cost: ``n_samples``
    evaluations of ``f`` plus ``O(n_samples^2 K)`` work per variable for the pair weights.
    ``generator``: optional ``torch.Generator`` on ``logits``' device.
    """
    check_callable(f)
    check_logits(logits)
    n = _integer(n_samples, "n_samples", 2)
    check_generator(generator, logits.device)
    shape, k = logits.shape, logits.shape[-1]
    wdt = _weight_dtype(logits)
    logp = torch.log_softmax(logits.detach().to(wdt), -1)
    p = logp.exp().reshape(-1, k).T.contiguous()  # (K, N) class-first
    cols = p.shape[1]
    # a random rotation per variable: the classes are laid out r, r+1, ..., r+K-1 (mod K)
    u_rot = uniform((1, cols), p, generator)
    r = (u_rot * k).long().clamp_max(k - 1)  # (1, N)
    p2 = torch.cat([p, p])  # (2K, N)
    ar = torch.arange(k, device=p.device)[:, None]
    p_rot = p2.gather(0, ar + r)  # (K, N): probability of the m-th class in the order
    cdf = p_rot.cumsum(0)
    total = cdf[-1:]
    u = _copula_uniforms(n, cols, p, generator)  # (n, N)
    v = torch.minimum(u * total, total * (1 - 4 * torch.finfo(wdt).eps))
    pos = (cdf[None] <= v[:, None]).sum(1)  # (n, N): position in the rotated order
    idx = (pos + r) % k  # (n, N) class indices
    eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
    x = eye[idx.T].reshape(cols, n, k).transpose(0, 1).reshape(n, *shape)
    fx = f(x)
    check_objective_values(fx, n, shape)
    fv = _per_variable(fx.detach().to(wdt), shape[:-1]).expand(n, *shape[:-1]).reshape(n, -1)

    # start of each drawn class's interval in every rotation: (K rotations, n, N)
    csum = torch.cat([torch.zeros_like(p2[:1]), p2.cumsum(0)])  # (2K+1, N) exclusive cumsum
    rot = torch.arange(k, device=p.device)[:, None, None]  # (K, 1, 1)
    t = rot + (idx[None] - rot) % k  # (K, n, N)
    start = csum[t, torch.arange(cols, device=p.device)] - csum[:k, None, :]
    pa = p.gather(0, idx)  # (n, N) probabilities of the drawn classes
    end = start + pa[None]
    ii, jj = torch.triu_indices(n, n, 1, device=p.device)  # all pairs i < j
    rs, re = _root_tail(start, n), _root_tail(end, n)  # (K, n, N)
    s = lambda a, b: _pair_survival(a, b, n)  # noqa: E731
    q = (s(rs[:, ii], rs[:, jj]) - s(re[:, ii], rs[:, jj])
         - s(rs[:, ii], re[:, jj]) + s(re[:, ii], re[:, jj])).mean(0)  # (P, N)
    differ = idx[ii] != idx[jj]
    w = torch.where(differ, pa[ii] * pa[jj] / q.clamp_min(torch.finfo(wdt).tiny),
                    torch.zeros_like(q))
    coef = w * (fv[ii] - fv[jj]) / (n * (n - 1))  # (P, N)
    # sum over pairs of coef * (score(a) - score(c)), score(a) = onehot(a) - p
    grad = torch.zeros(k, cols, dtype=wdt, device=p.device)
    grad = grad.scatter_add(0, idx[ii], coef).scatter_add(0, idx[jj], -coef)
    grad = grad.T.reshape(shape)
    lin = (grad.to(compute_dtype(logits)) * _finite(logits.to(compute_dtype(logits)))).sum()
    return fx.mean(0).sum() + (lin - lin.detach()).to(logits.dtype)

