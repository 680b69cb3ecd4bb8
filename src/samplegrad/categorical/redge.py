"""ReDGE: categorical reparameterization through a training-free DDIM sampler.

Forward process on one-hot vectors ``x_t = alpha_t x_0 + sigma_t eps`` with the linear
schedule ``alpha_t = 1 - t``; the prior is exactly ``Cat(softmax(logits))``, so the denoiser
``E[x_0 | x_t] = softmax(logits + alpha_t / sigma_t**2 * x_t)`` is closed form. A few
deterministic DDIM steps carry a Gaussian seed to the endpoint ``t1``; the soft sample is
the denoiser there, the hard sample a one-hot draw, and the gradient is pathwise through
every DDIM step (see docs/methods.md#redge).

Speed and memory: the sampler runs inside one autograd Function that saves the class-first
logits, the seed, the soft sample and the hard indices (``O(1)`` tensors whatever
``n_steps``) and recomputes the path in backward, with the vector-Jacobian products of the
paper and ``"max"`` variants written out by hand. The DDIM state is carried rescaled,
``x_i = (sigma_i / sigma_{n-1}) w_i``, so that one step is three kernels:
``z = theta + s_i w``, ``p = softmax(z)``, ``w += gamma_i p``; temporaries live in per-thread
scratch buffers, and the gradient is written straight into the logits' layout.

``torch.compile`` / ``torch.func``: the Function has ``setup_context`` and
``generate_vmap_rule``; all randomness (seed, the uniforms of the hard draw) is drawn
outside it, in one RNG call, and under compile/transforms the same math runs out of place.
"""

from __future__ import annotations

import functools
import math
import threading

import torch

from samplegrad.categorical._checks import (
    check_flag,
    check_generator,
    check_logits,
    check_n_steps,
    check_noise,
    check_t1,
    compute_dtype,
)
from samplegrad.categorical._sampling import (
    eager_twin,
    from_kn,
    functional_mode,
    normal,
    one_hot,
    one_hot_kn,
    sample_index_kn,
    softmax_vjp_kn,
    to_kn,
    uniform,
)

VARIANTS = ("paper", "cov", "max")
_MIN_VAR = 0.1  # variance floor of the moment-matched ("cov") forward model
# t1 below this is computed as T1_FLOOR: c_1 = alpha / sigma^2 ~ 1e24 already makes the soft
# sample one-hot to every float precision (the t1 -> 0 limit, zero gradient); smaller t1
# would overflow float32 (and at t1 < 1e-16, 1 - t1 == 1 in float64)
T1_FLOOR = 1e-12
# exact=True inversion, per level (fixed counts, chosen from the grid and dtype: no
# data-dependent loop): where kappa = a_i c_i / b_i <= _KAPPA_NEWTON, fixed-point iterations
# (as many as the contraction bound needs) or NEWTON_STEPS Newton steps, whichever is
# cheaper; above it, DUAL_STEPS (normalizer, Lambert-W) iterations of the globally
# convergent dual solve followed by 2 Newton steps
NEWTON_STEPS = 3  # float32 (and half, computed in float32); one more in float64
DUAL_STEPS = (8, 2)
_KAPPA_NEWTON = 0.5


def _linspace(start: float, end: float, steps: int) -> list[float]:
    """``torch.linspace`` in Python floats (same formula, both ends exact)."""
    if steps == 1:
        return [start]
    step = (end - start) / (steps - 1)
    half = steps // 2
    return [start + step * i if i < half else end - step * (steps - i - 1)
            for i in range(steps)]


def _cached(fn):
    """Memoize a function of ``(n_steps, t1)`` in eager mode; while ``torch.compile`` traces,
    call it directly (plain Python float arithmetic, folded into constants)."""
    cache: dict = {}

    @functools.wraps(fn)
    def wrapper(n_steps: int, t1: float):
        if torch.compiler.is_compiling():
            return fn(n_steps, t1)
        key = (n_steps, t1)
        out = cache.get(key)
        if out is None:
            if len(cache) > 4096:
                cache.clear()
            out = cache[key] = fn(n_steps, t1)
        return out

    return wrapper


@_cached
def _grid(n_steps: int, t1: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    t1 = max(t1, T1_FLOOR)
    alphas = (1.0, *_linspace(1.0 - t1, 1e-4, n_steps - 1))
    sigmas = tuple(1.0 - a for a in alphas)
    return alphas, (0.0, t1, *sigmas[2:])  # sigma_t1 = t1 exactly, not 1 - (1 - t1)


def schedule(n_steps: int, t1: float) -> tuple[list[float], list[float]]:
    """Reference grid ``alpha = [1, linspace(1 - t1, 1e-4, n_steps - 1)]``, ``sigma = 1 - alpha``.

    Index 0 is the data end, index ``n_steps - 1`` the noise end; the sampler calls the
    denoiser at indices ``n_steps - 1, ..., 1`` (``n_steps - 1`` calls) and stops at index 1
    (``t = t1``).
    """
    al, si = _grid(n_steps, t1)
    return list(al), list(si)


@_cached
def _coefficients(n_steps: int, t1: float):
    """``c_i = alpha_i / sigma_i^2`` and the DDIM step ``x_{i-1} = a_i p_i + b_i x_i``."""
    al, si = _grid(n_steps, t1)
    c = tuple(al[i] / si[i] ** 2 if si[i] > 0 else float("inf") for i in range(n_steps))
    a = (0.0, 0.0, *(al[i - 1] - si[i - 1] * al[i] / si[i] for i in range(2, n_steps)))
    b = (0.0, 0.0, *(si[i - 1] / si[i] for i in range(2, n_steps)))
    return c, a, b


@_cached
def _fused(n_steps: int, t1: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients of the rescaled state ``w_i = x_i sigma_{n-1} / sigma_i``.

    ``x_{i-1} = a_i p_i + b_i x_i`` with ``b_i = sigma_{i-1} / sigma_i`` telescopes to
    ``w_{i-1} = w_i + gamma_i p_i``, ``gamma_i = a_i sigma_{n-1} / sigma_{i-1}``, and the
    denoiser input ``theta + c_i x_i = theta + s_i w_i`` with ``s_i = c_i sigma_i /
    sigma_{n-1}``. Returns ``(s, gamma)`` indexed like the grid.
    """
    c, a, _ = _coefficients(n_steps, t1)
    _, si = _grid(n_steps, t1)
    top = si[n_steps - 1]
    s = (0.0, *(c[i] * si[i] / top for i in range(1, n_steps)))
    gamma = (0.0, 0.0, *(a[i] * top / si[i - 1] for i in range(2, n_steps)))
    return s, gamma


# ----------------------------------------------------------------------------- paper path

def _path(theta: torch.Tensor, seed: torch.Tensor, n_steps: int, t1: float,
          keep: torch.Tensor | list | None = None, fm: bool | None = None,
          need_w: bool | None = None) -> torch.Tensor:
    """DDIM from ``seed`` (index ``n-1``) down to index 1 in ``(K, N)`` layout; returns the
    rescaled state ``w_1`` (``x_1 = sigma_1 / sigma_{n-1} w_1``), a fresh tensor (never
    ``seed`` itself; eager with ``keep``: ``None``, the softmaxes are all that is wanted).

    ``keep``, if given, receives ``p_{n-1}, ..., p_2`` (eager: a ``(n-2, K, N)`` buffer;
    compile/func: a list). Eager: three kernels per step, in place on scratch buffers
    (PyTorch's CPU allocator returns mid-sized blocks to the OS, so every fresh tensor costs
    page faults). Under compile/func: out of place. ``need_w`` (eager; default: without
    ``keep``): also compute ``w_1`` when keeping the softmaxes.
    """
    s, gamma = _fused(n_steps, t1)
    if functional_mode() if fm is None else fm:
        w = seed
        for i in range(n_steps - 1, 1, -1):
            p = torch.softmax(torch.add(theta, w, alpha=s[i]), 0)
            if keep is not None:
                keep.append(p)
            w = torch.add(w, p, alpha=gamma[i])
        return w
    if n_steps <= 2:
        return seed.clone()
    z = _workspace(theta.shape, theta.dtype, theta.device, slot=0)
    p = _workspace(theta.shape, theta.dtype, theta.device, slot=1) if keep is None else None
    w = None
    for j, i in enumerate(range(n_steps - 1, 1, -1)):
        q = p if keep is None else keep[j]
        torch._softmax(torch.add(theta, seed if w is None else w, alpha=s[i], out=z), 0, False,
                       out=q)
        if keep is not None and i == 2 and not need_w:
            break  # the backward sweep needs the softmaxes only, not w_1
        w = torch.add(seed, q, alpha=gamma[i]) if w is None else w.add_(q, alpha=gamma[i])
    return w


def _soft_end(theta: torch.Tensor, w: torch.Tensor, n_steps: int, t1: float,
              fm: bool) -> torch.Tensor:
    """``softmax(theta + c_1 x_1)`` from the rescaled ``w_1`` (eager: overwrites ``w``)."""
    s, _ = _fused(n_steps, t1)
    if fm:
        return torch.softmax(torch.add(theta, w, alpha=s[1]), 0)
    z = _workspace(theta.shape, theta.dtype, theta.device, slot=0)
    return torch._softmax(torch.add(theta, w, alpha=s[1], out=z), 0, False, out=w)


def _newton_solve(theta_eff: torch.Tensor, cc, a: float, b: float, y: torch.Tensor,
                  x: torch.Tensor, iters: int) -> torch.Tensor:
    """Solve ``b x + a softmax(theta_eff + cc * x) = y`` (over axis 0) by Newton from ``x``.

    The left side is the gradient of a strongly convex function of ``x`` (``a, b, cc > 0``),
    so the root is unique; its Jacobian ``diag(b + a cc p) - a p (cc p)^T`` is inverted in
    closed form (Sherman-Morrison). ``cc`` is a number or a tensor broadcasting to ``x``.
    Converges fast from a close start; from a far one it can cycle when ``a cc / b`` is
    large, hence :func:`_dual_solve` first on those levels.
    """
    scalar = not isinstance(cc, torch.Tensor)
    for _ in range(iters):
        z = torch.add(theta_eff, x, alpha=cc) if scalar else theta_eff + cc * x
        p = torch.softmax(z, 0)
        r = torch.add(p * a, x, alpha=b).sub_(y)  # b x + a p - y
        inv_d = (p * (a * cc)).add_(b).reciprocal_()  # D^-1, D = b + a cc p
        pd = p.mul_(inv_d)  # D^-1 p
        # Sherman-Morrison: delta = D^-1 r + a (q^T D^-1 r) / (1 - a q^T D^-1 p) D^-1 p with
        # q = cc p, and 1 - a q^T D^-1 p = b <p, D^-1 1> + (1 - sum p): written so, without
        # the cancellation that would make it 0 when b << a cc p (tiny t1)
        if scalar:
            coef = (pd * r).sum(0, keepdim=True).div_(pd.sum(0, keepdim=True)) \
                .mul_(a * cc / b)
        else:
            coef = (pd * r * cc).sum(0, keepdim=True).div_(pd.sum(0, keepdim=True)) \
                .mul_(a / b)
        x = x - r.mul_(inv_d).addcmul_(pd, coef)
    return x


def _dual_solve(theta_eff: torch.Tensor, cc, a: float, b: float, y: torch.Tensor,
                outer: int = DUAL_STEPS[0], inner: int = DUAL_STEPS[1]) -> torch.Tensor:
    """Globally convergent start for :func:`_newton_solve`, through the denoiser output.

    With ``p = softmax(theta_eff + cc x)`` and ``x = (y - a p) / b`` the equation becomes
    ``p = softmax(v - kappa p)``, ``v = theta_eff + cc y / b``, ``kappa = a cc / b``, i.e.
    ``kappa_k p_k = W(kappa_k exp(v_k - mu))`` (Lambert W) for the log-normalizer ``mu``,
    fixed by ``sum_k p_k = 1``. That sum is convex and decreasing in ``mu``, so Newton on
    ``mu`` started left of the root (``mu = logsumexp(v) - max kappa``, where the sum is
    >= 1) increases monotonically to it; ``W(e^s)`` is computed by Newton on
    ``w + log w = s`` from ``softplus(s)`` (also monotone after the first step). Fixed
    iteration counts, no data-dependent control flow.
    """
    kappa = a * cc / b
    v = theta_eff + (cc / b) * y
    v = v - v.amax(0, keepdim=True)  # some class is finite: the max is
    if isinstance(kappa, torch.Tensor):
        log_kappa, kappa_max = kappa.log(), kappa.amax(0, keepdim=True)
    else:
        log_kappa, kappa_max = math.log(kappa), kappa
    mu = torch.logsumexp(v, 0, keepdim=True) - kappa_max
    for it in range(outer + 1):
        # masked classes (v = -inf) and negligible ones: w = e^s ~ 1e-26, harmless
        s = (v + (log_kappa - mu)).clamp(min=-60.0)
        w = torch.nn.functional.softplus(s)
        for _ in range(inner):
            w = w * (1.0 + s - w.log()) / (1.0 + w)
        if it < outer:
            mass = (w / kappa).sum(0, keepdim=True)
            slope = (w / ((1.0 + w) * kappa)).sum(0, keepdim=True)
            mu = mu + (mass - 1.0) / slope
    return (y - a * (w / kappa)) / b


def _newton_steps(dtype: torch.dtype) -> int:
    """Newton iterations from the DDIM-inversion guess where ``a c / b <= 0.5``: the residual
    is at rounding level after 3 in float32 (2e-6 after 2) and 4 in float64 (2e-13 after
    3), measured over t1 in [0.2, 0.9], n_steps <= 33, K <= 64, logits N(0, 10^2)."""
    return NEWTON_STEPS + (dtype == torch.float64)


def _fixed_point_steps(kappa_max: float, a: float, b: float, dtype: torch.dtype) -> int:
    """Iterations of ``x <- (y - a softmax(theta + c x)) / b`` that reach rounding level.

    The map contracts with factor ``kappa / 2`` (the softmax Jacobian has norm <= 1/2) and
    the DDIM-inversion guess is off by at most ``sqrt(2) a / b``; so ``m`` iterations leave
    ``sqrt(2) a / b (kappa / 2)^m``. A function of the grid and dtype only."""
    tol = 1e-16 if dtype == torch.float64 else 1e-8
    rate = kappa_max / 2
    if rate <= 0.0:
        return 1
    return max(1, math.ceil(math.log(tol / (1.5 * a / b)) / math.log(rate)))


def _fixed_point_solve(theta_eff: torch.Tensor, cc, a: float, b: float, y: torch.Tensor,
                       x: torch.Tensor, iters: int) -> torch.Tensor:
    """``iters`` steps of ``x <- y / b - (a / b) softmax(theta_eff + cc x)``: three kernels
    each (eager: in place on scratch buffers; ``x``, a fresh guess, is overwritten), for the
    (many) levels where ``a cc / b`` is small."""
    yb = y / b
    if functional_mode() or isinstance(cc, torch.Tensor):
        for _ in range(iters):
            z = theta_eff + cc * x if isinstance(cc, torch.Tensor) \
                else torch.add(theta_eff, x, alpha=cc)
            x = torch.add(yb, torch.softmax(z, 0), alpha=-a / b)
        return x
    z = _workspace(x.shape, x.dtype, x.device, slot=7)
    p = _workspace(x.shape, x.dtype, x.device, slot=8)
    for _ in range(iters):
        torch._softmax(torch.add(theta_eff, x, alpha=cc, out=z), 0, False, out=p)
        torch.add(yb, p, alpha=-a / b, out=x)
    return x


def _solve_level(theta_eff: torch.Tensor, cc, kappa_max: float, a: float, b: float,
                 y: torch.Tensor, guess) -> torch.Tensor:
    """``x`` with ``b x + a softmax(theta_eff + cc x) = y``. Which solver runs depends only on
    the grid (``kappa_max`` bounds ``a cc / b``) and the dtype, never on data: fixed-point
    iterations from the usual DDIM-inversion ``guess()`` where they contract fast (few
    iterations), else Newton from the guess where ``kappa <= 0.5``, else :func:`_dual_solve`
    polished by two Newton steps (plain DDIM inversion if ``a <= 0``, see below)."""
    if a <= 0.0:  # t1 > 1 - 1e-4: the grid is not monotone and the root not unique; at
        return guess()  # such t1 the path's weight c_1 <= 1e-4 (0 at t1 = 1) anyway
    if kappa_max <= _KAPPA_NEWTON:
        m = _fixed_point_steps(kappa_max, a, b, y.dtype)
        newton = _newton_steps(y.dtype)
        if m <= 5 * newton:  # a fixed-point step costs 3 kernels, a Newton step about 15
            return _fixed_point_solve(theta_eff, cc, a, b, y, guess(), m)
        return _newton_solve(theta_eff, cc, a, b, y, guess(), newton)
    return _newton_solve(theta_eff, cc, a, b, y, _dual_solve(theta_eff, cc, a, b, y), 2)


def _invert(theta: torch.Tensor, x1: torch.Tensor, n_steps: int, t1: float,
            p1: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The seed whose DDIM path passes through ``x1``, and the denoiser outputs along it.

    Level by level, ``x_i`` solves ``x_{i-1} = a_i softmax(theta + c_i x_i) + b_i x_i``
    (:func:`_solve_level`), started from the usual DDIM inversion, which evaluates the
    denoiser at ``x_{i-1}`` (``p_{i-1}``: the previous level's output, ``p1`` the soft
    sample). Returns ``(seed, [p_{n-1}, ..., p_2])`` with ``p_i`` the denoiser output at
    the recovered ``x_i``.
    """
    c, a, b = _coefficients(n_steps, t1)
    x = x1
    p = torch.softmax(torch.add(theta, x1, alpha=c[1]), 0) if p1 is None else p1
    ps = []
    for i in range(2, n_steps):
        def guess(x=x, p=p, i=i):
            return torch.add(x, p, alpha=-a[i]).div_(b[i])

        x = _solve_level(theta, c[i], a[i] * c[i] / b[i], a[i], b[i], x, guess)
        p = torch.softmax(torch.add(theta, x, alpha=c[i]), 0)
        ps.append(p)
    return x, ps[::-1]


def _forward_from_seed(theta: torch.Tensor, seed: torch.Tensor, n_steps: int,
                       t1: float) -> torch.Tensor:
    """``x_1`` of the plain DDIM recursion from ``seed`` (no rescaling; for residual checks)."""
    c, a, b = _coefficients(n_steps, t1)
    x = seed
    for i in range(n_steps - 1, 1, -1):
        x = a[i] * torch.softmax(theta + c[i] * x, 0) + b[i] * x
    return x


def recover_seed(logits: torch.Tensor, x1: torch.Tensor, n_steps: int = 5, t1: float = 0.5,
                 variant: str = "paper") -> torch.Tensor:
    """The standard-normal seed whose DDIM path (``variant`` ``"paper"``/``"max"`` or
    ``"cov"``) passes through ``x1`` at ``t1``: what ``exact=True`` differentiates along.
    Class axis last; no gradient. ``x1 = alpha_t1 h + sigma_t1 eps`` for the exact draw."""
    with torch.no_grad():
        theta, x = to_kn(logits.detach()), to_kn(x1.detach())
        if variant == "cov":
            seed = _cov_invert(theta, x, n_steps, t1)
        else:
            seed, _ = _invert(theta, x, n_steps, t1)
        return from_kn(seed, logits.shape)


def inversion_residual(logits: torch.Tensor, x1: torch.Tensor, n_steps: int = 5,
                       t1: float = 0.5) -> torch.Tensor:
    """``max |DDIM(seed) - x1|`` per variable (``"paper"``) for the seed of
    :func:`recover_seed` (class axis last)."""
    theta, x = to_kn(logits.detach()), to_kn(x1.detach())
    seed, _ = _invert(theta, x, n_steps, t1)
    return (_forward_from_seed(theta, seed, n_steps, t1) - x).abs().amax(0).reshape(
        logits.shape[:-1])


_WORKSPACE = threading.local()


def _workspace(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
               slot: int = 2) -> torch.Tensor:
    """A scratch buffer reused across calls (per thread, dtype and ``slot``, grown on demand).

    Fresh memory from the CPU allocator is page-faulted on first touch, which costs more than
    the arithmetic here; reusing buffers keeps the sampler arithmetic-bound. A buffer holds
    temporaries only during one forward or backward call (0, 1: the path's scores and
    softmaxes; 2: the softmaxes kept for the backward sweep; 3: the CDF, then the
    class-first upstream gradient; 4-6: the backward sweep; 7, 8: the fixed-point
    iterations of ``exact=True``'s inversion) and is never part of the
    autograd graph nor returned. Buffers above 2**26 elements and ``torch.cuda`` tensors
    (whose allocator already caches) are not kept.
    """
    numel = 1
    for d in shape:
        numel *= d
    if device.type != "cpu" or numel > 2**26:
        return torch.empty(shape, dtype=dtype, device=device)
    cache = _WORKSPACE.__dict__.setdefault("buffers", {})  # one set per thread
    buf = cache.get((dtype, slot))
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        cache[(dtype, slot)] = buf
        _owners().pop((dtype, slot), None)  # what the old buffer held is gone
    return buf[:numel].view(shape)


def _owners() -> dict:
    """Per thread: ``(dtype, slot) -> key`` of the call whose values a buffer still holds."""
    return _WORKSPACE.__dict__.setdefault("owners", {})


def _path_key(theta: torch.Tensor, seed: torch.Tensor, n_steps: int, t1: float) -> tuple:
    """Identifies one forward call's DDIM path while its saved ``theta`` and ``seed`` live
    (their storage cannot be reused before the backward has run)."""
    return (theta.data_ptr(), theta._version, seed.data_ptr(), seed._version, theta.shape,
            n_steps, t1)


class _ReDGE(torch.autograd.Function):
    """Logits ``(*batch, K)``, seed and uniforms (``(K, N)``, ``(1, N)``) -> hard (or soft)
    sample ``(*batch, K)``, for the ``paper`` and ``max`` variants; saves O(1) tensors.

    The class-first copy of the logits is made inside (no autograd nodes for the layout
    change), and the value checks run on it. Outputs ``(out, soft, idx, theta)`` (and
    ``x_t1`` when ``exact``); only ``out`` is differentiable. The backward maps the gradient
    at ``out`` to the logits as if it were the gradient at the soft sample (straight-through),
    through every DDIM step.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, noise, u, n_steps: int, t1: float, variant: str, exact: bool,
                hard_out: bool):
        fm = functional_mode()
        theta = to_kn(logits)
        if exact:
            # (h, x_t1) from the exact joint: h ~ Cat(pi), x_t1 = alpha h + sigma eps; then
            # soft = E[x_0 | x_t1] and h | x_t1 ~ Cat(soft) exactly.
            al, si = _grid(n_steps, t1)
            c, _, _ = _coefficients(n_steps, t1)
            idx = sample_index_kn(torch.softmax(theta, 0), u, theta)
            x1 = torch.add(noise * si[1], one_hot_kn(idx, theta.shape[0], theta.dtype),
                           alpha=al[1])
            soft = torch.softmax(torch.add(theta, x1, alpha=c[1]), 0)
        else:
            keep = None
            if not fm and n_steps > 2 and theta.device.type == "cpu":
                # keep the path's softmaxes in the backward sweep's buffer: a backward that
                # follows before any other call on this thread reuses them (no recompute)
                keep = _workspace((n_steps - 2, *theta.shape), theta.dtype, theta.device, 2)
                _owners().pop((theta.dtype, 2), None)  # being overwritten
            w1 = _path(theta, noise, n_steps, t1, keep=keep, fm=fm, need_w=True)
            if keep is not None:
                _owners()[(theta.dtype, 2)] = _path_key(theta, noise, n_steps, t1)
            soft = _soft_end(theta, w1, n_steps, t1, fm)
            cdf = None if fm else _workspace(theta.shape, theta.dtype, theta.device, slot=3)
            idx = sample_index_kn(soft, u, theta, cdf)  # and the value check of the logits
        out = (one_hot(idx, logits.shape, theta.dtype, fm) if hard_out
               else from_kn(soft, logits.shape))
        return (out, soft, idx, theta, x1) if exact else (out, soft, idx, theta)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, noise, _, n_steps, t1, variant, exact, _ = inputs
        _, soft, idx, theta = output[:4]
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero gradients for the extra outputs
        # exact: the state x_t1 (the seed is recovered in backward); else the seed itself
        ctx.save_for_backward(theta, output[4] if exact else noise, soft, idx)
        ctx.cfg = (n_steps, t1, variant, exact)

    @staticmethod
    def backward(ctx, g, *_):
        theta, state, soft, idx = ctx.saved_tensors
        n_steps, t1, variant, exact = ctx.cfg
        if g is None:  # only the extra outputs were used: no gradient
            return None, None, None, None, None, None, None, None
        backward = _backward_functional if functional_mode() else _backward_eager
        grad = backward(theta, state, soft, idx, g, n_steps, t1, variant, exact)
        return grad, None, None, None, None, None, None, None


# The backward pass. With the upstream gradient g at the soft sample s = softmax(theta +
# s_1 w_1): u = J_s^T g is the direct term, and the gradient reaching w_1 is s_1 u. The
# reverse sweep runs in w units, h = (dL/dw_{i-1}) / s_1 and q = J_{p_i}^T h: since
# w_{i-1} = w_i + gamma_i p_i(theta + s_i w_i), grad += gamma_i s_1 q and h += gamma_i s_i q.
# "max" replaces the direct term u by (u + <g, d> d) / 2, d = h - s (h the hard sample).

def _backward_functional(theta, state, soft, idx, g, n_steps, t1, variant, exact):
    """Out of place (torch.compile / torch.func)."""
    shape = g.shape
    g = to_kn(g)
    s, gamma = _fused(n_steps, t1)
    if exact:  # the path through the exact x_t1, by DDIM inversion solved exactly
        _, ps = _invert(theta, state, n_steps, t1, p1=soft)
    else:
        ps = []
        _path(theta, state, n_steps, t1, keep=ps, fm=True)  # [p_{n-1}, ..., p_2]
    h = softmax_vjp_kn(soft, g)
    grad = h
    if variant == "max":
        d = one_hot_kn(idx, theta.shape[0], theta.dtype) - soft
        grad = 0.5 * h + (0.5 * (g * d).sum(0, keepdim=True)) * d
    for j, i in enumerate(range(2, n_steps)):
        q = softmax_vjp_kn(ps[n_steps - 3 - j], h)
        grad = torch.add(grad, q, alpha=gamma[i] * s[1])
        h = torch.add(h, q, alpha=gamma[i] * s[i])
    return from_kn(grad, shape)


def _sbd(g: torch.Tensor, p: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``J_softmax(p)^T g`` over axis 0 into ``out``: one fused ATen kernel."""
    return torch.ops.aten._softmax_backward_data.out(g, p, 0, p.dtype, grad_input=out)


def _backward_eager(theta, state, soft, idx, g, n_steps, t1, variant, exact):
    """In place on scratch buffers; only the returned gradient is fresh memory (written
    straight into the logits' layout by the last step)."""
    shape = g.shape
    k, n = theta.shape
    s, gamma = _fused(n_steps, t1)

    def ws(slot):
        return _workspace(theta.shape, theta.dtype, theta.device, slot)

    gk = ws(3).copy_(g.reshape(n, k).T)  # class-first copy of g
    if exact:  # the path through the exact x_t1, by DDIM inversion solved exactly
        _, ps = _invert(theta, state, n_steps, t1, p1=soft)
    else:
        ps = _workspace((max(n_steps - 2, 0), k, n), theta.dtype, theta.device, slot=2)
        key = _path_key(theta, state, n_steps, t1)
        owners = _owners()
        if owners.get((theta.dtype, 2)) != key:  # else the forward's softmaxes are still there
            owners.pop((theta.dtype, 2), None)
            _path(theta, state, n_steps, t1, keep=ps, fm=False)  # [p_{n-1}, ..., p_2]
            owners[(theta.dtype, 2)] = key
    h = _sbd(gk, soft, ws(4))
    grad = None  # None: the same as h so far
    if variant == "max":
        d = one_hot_kn(idx, k, theta.dtype).sub_(soft)
        grad = torch.mul(h, 0.5, out=ws(6)).add_(d.mul_((gk * d).sum(0, keepdim=True)),
                                                  alpha=0.5)
    out = torch.empty((n, k), dtype=theta.dtype, device=theta.device)
    if n_steps == 2:
        return out.copy_((h if grad is None else grad).T).reshape(shape)
    q = ws(5)
    for j, i in enumerate(range(2, n_steps)):
        _sbd(h, ps[n_steps - 3 - j], q)
        if i == n_steps - 1:  # last step: write the result in the logits' layout
            torch.add(h if grad is None else grad, q, alpha=gamma[i] * s[1], out=out.T)
            return out.reshape(shape)
        if grad is None:
            grad = torch.add(h, q, alpha=gamma[i] * s[1], out=ws(6))
        else:
            grad.add_(q, alpha=gamma[i] * s[1])
        h.add_(q, alpha=gamma[i] * s[i])
    raise AssertionError("unreachable")


_ReDGE_EAGER = eager_twin(_ReDGE)


# ------------------------------------------------------------------------------- cov path

def _cov_forward_model(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(theta, 0)
    return probs, (probs * (1 - probs)).clamp(min=_MIN_VAR)


def _cov_affine(probs, var, alpha: float, sigma: float):
    """The cov denoiser is ``softmax(theta + shift + cc * x)``: returns ``(shift, cc)``.

    Written as ``(alpha / sigma^2) (x - sigma pi - alpha / 2) / v`` with the scalar factor
    computed in float64 first, so a tiny ``sigma`` (``t1`` down to 1e-10 in float32) does
    not overflow an intermediate.
    """
    k = alpha / sigma**2
    cc = k / var
    return -(sigma * probs + alpha / 2) * cc, cc


def _cov_denoise(theta, probs, var, x, alpha, sigma):
    """Posterior mean if ``x_t | x_0 ~ N(alpha x_0 + sigma probs, sigma^2 diag var)``."""
    shift, cc = _cov_affine(probs, var, alpha, sigma)
    return torch.softmax(theta + shift + cc * x, 0)


def _cov_soft(theta: torch.Tensor, x: torch.Tensor, n_steps: int, t1: float) -> torch.Tensor:
    """The "cov" sampler from a standard-normal seed, differentiable (autograd)."""
    al, si = _grid(n_steps, t1)
    probs, var = _cov_forward_model(theta)
    x = probs + var.sqrt() * x
    for i in range(n_steps - 1, 1, -1):
        p = _cov_denoise(theta, probs, var, x, al[i], si[i])
        x = al[i - 1] * p + si[i - 1] * (x - al[i] * p) / si[i]
    return _cov_denoise(theta, probs, var, x, al[1], si[1])


def _cov_invert(theta: torch.Tensor, x1: torch.Tensor, n_steps: int, t1: float,
                ) -> torch.Tensor:
    """Standard-normal seed whose cov DDIM path passes through ``x1`` (see :func:`_invert`)."""
    al, si = _grid(n_steps, t1)
    _, a, b = _coefficients(n_steps, t1)
    probs, var = _cov_forward_model(theta)
    x = x1
    for i in range(2, n_steps):
        shift, cc = _cov_affine(probs, var, al[i], si[i])

        def guess(x=x, i=i):
            return (x - a[i] * _cov_denoise(theta, probs, var, x, al[i - 1], si[i - 1])) / b[i]

        kappa_max = a[i] * al[i] / si[i] ** 2 / _MIN_VAR / b[i]  # var >= _MIN_VAR
        x = _solve_level(theta + shift, cc, kappa_max, a[i], b[i], x, guess)
    return (x - probs) / var.sqrt()


def _cov_exact_state(theta, noise, u, n_steps, t1):
    """Exact joint draw for ``cov``: ``h ~ Cat(pi)``, ``x_t1`` from the cov forward model."""
    al, si = _grid(n_steps, t1)
    probs, var = _cov_forward_model(theta)
    idx = sample_index_kn(probs, u)
    hard = one_hot_kn(idx, theta.shape[0], theta.dtype)
    x1 = al[1] * hard + si[1] * (probs + var.sqrt() * noise)
    return idx, x1, _cov_denoise(theta, probs, var, x1, al[1], si[1])


class _ReDGECov(torch.autograd.Function):
    """``cov`` variant in eager mode: saves O(1) tensors and recomputes the path in backward
    with autograd (under compile/func the path is differentiated by autograd directly)."""

    @staticmethod
    def forward(theta, noise, u, n_steps: int, t1: float, exact: bool, hard_out: bool,
                shape: torch.Size):
        if exact:
            idx, x1, soft = _cov_exact_state(theta, noise, u, n_steps, t1)
        else:
            soft = _cov_soft(theta, noise, n_steps, t1)
            idx = sample_index_kn(soft, u)
        out = one_hot(idx, shape, theta.dtype) if hard_out else from_kn(soft, shape)
        return (out, soft, idx, x1) if exact else (out, soft, idx)

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, noise, _, n_steps, t1, exact, _, _ = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(theta, output[3] if exact else noise)
        ctx.cfg = (n_steps, t1, exact)

    @staticmethod
    def backward(ctx, g, *_):
        theta, state = ctx.saved_tensors
        n_steps, t1, exact = ctx.cfg
        seed = _cov_invert(theta, state, n_steps, t1) if exact else state
        with torch.enable_grad():
            th = theta.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_cov_soft(th, seed, n_steps, t1), th, to_kn(g))
        return grad, None, None, None, None, None, None, None


def _redge_cov_functional(theta, noise, u, n_steps, t1, exact, hard_out, shape):
    """``cov`` under torch.compile / torch.func: plain autograd through the sampler."""
    if exact:
        with torch.no_grad():
            idx, x1, soft_value = _cov_exact_state(theta.detach(), noise, u, n_steps, t1)
            seed = _cov_invert(theta.detach(), x1, n_steps, t1)
        soft = _cov_soft(theta, seed, n_steps, t1)
        soft = soft_value + (soft - soft.detach())
    else:
        soft = _cov_soft(theta, noise, n_steps, t1)
        idx = sample_index_kn(soft.detach(), u)
    if not hard_out:
        return from_kn(soft, shape)
    hard = one_hot_kn(idx, theta.shape[0], theta.dtype)
    return from_kn(hard + (soft - soft.detach()), shape)


def redge(logits: torch.Tensor, n_steps: int = 5, t1: float = 0.5, hard: bool = True, *,
          variant: str = "paper", exact: bool = False, noise: torch.Tensor | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """ReDGE sample of ``Cat(softmax(logits))`` with a diffusion pathwise gradient.

    Args:
        logits: ``(*batch, K)`` unnormalized log-probabilities; ``-inf`` masks a class.
        n_steps: grid points of the sampler (``n_steps - 1`` denoiser calls), >= 2.
        t1: endpoint in (0, 1], a temperature: ``t1 = 1`` is straight-through, small ``t1``
            gives nearly one-hot soft samples (``t1 < 1e-12`` is computed as ``1e-12``, where
            soft samples are already one-hot to float precision).
        hard: return the one-hot sample with the soft sample's gradient
            (``h + s - s.detach()``); ``False`` returns the soft sample ``s`` (on the simplex).
        variant: ``"paper"`` (Gaussian seed, exact posterior denoiser), ``"cov"`` (moment-
            matched seed and denoiser), or ``"max"`` (ReinMax-style correction; hard only).
        exact: draw hard samples exactly from ``Cat(softmax(logits))`` for every ``n_steps``
            and ``t1``. The pair (hard, x_t1) is drawn from the exact joint of the forward model
            (``h ~ Cat(pi)``, then ``x_t1 = alpha h + sigma eps``), the soft sample is the exact
            posterior mean ``E[x_0 | x_t1]`` (so ``h | x_t1 ~ Cat(soft)`` as in the default), and
            the gradient is the pathwise gradient of the DDIM path through ``x_t1``: DDIM
            inversion recovers the seed (:func:`recover_seed`; each level solved by Newton's
            method, with a globally convergent dual start where the step is stiff, fixed
            iteration counts), so that a forward DDIM run from that seed passes through
            ``x_t1``: ``max |DDIM(seed) - x_t1| <= 1e-5`` in float32 and ``<= 1e-7`` in float64
            (measured for t1 in [0.01, 1], n_steps <= 33, K <= 64, logits up to N(0, 10^2),
            masked classes; about 1e-14 in float64 for t1 < 0.9999). The gradient is that of
            the soft sample along this path with the seed held fixed. The
            default (``False``) follows the reference: the DDIM path only approximates the
            marginal of ``x_t1``, so hard samples are biased at small n_steps. Because the
            posterior at the exact ``x_t1`` is sharper than at the DDIM approximation,
            ``exact=True`` wants a larger ``t1`` (about 0.3 or more): at ``t1 = 0.1`` soft
            samples are nearly one-hot and the gradient nearly vanishes, as for Gumbel-softmax
            at a tiny temperature.
        noise: optional standard Gaussian noise shaped like ``logits`` (finite; checked when
            validation is on): the DDIM seed, or with ``exact=True`` the forward-process
            noise ``eps`` of ``x_t1``. Default: drawn from ``generator``.
        generator: optional ``torch.Generator`` on ``logits``' device for the random draws
            (seed and hard sample: one Gaussian draw of ``K + 1`` rows, the last row mapped
            to uniforms by the normal CDF); ``None`` uses the global RNG. (``torch.compile``
            cannot trace a generator argument: under compile pass ``noise`` or use the global
            RNG.)

    Returns:
        ``(*batch, K)`` tensor in ``logits.dtype``.
    """
    check_logits(logits, values=variant == "cov")  # paper/max: values checked class-first
    n_steps = check_n_steps(n_steps)
    t1 = check_t1(t1)
    hard = check_flag(hard, "hard")
    exact = check_flag(exact, "exact")
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {VARIANTS}, got {variant!r}")
    if variant == "max" and not hard:
        raise ValueError("variant: 'max' corrects the hard sample's gradient; use hard=True")
    check_generator(generator, logits.device)
    dt = compute_dtype(logits)
    k = logits.shape[-1]
    n = logits.numel() // k
    if noise is None:
        # one draw for the seed and the uniforms of the hard sample (u = Phi(z)): a single
        # RNG call, so torch.compile cannot reorder two draws against eager mode
        z = normal((k + 1, n), logits, generator, dt)
        noise, u = z[:k], torch.special.ndtr(z[k:])
    else:
        check_noise(noise, logits)
        noise = to_kn(noise.to(dt))
        u = uniform((1, n), logits, generator, dt)
    if variant == "cov":
        theta = to_kn(logits.to(dt))
        if functional_mode():
            out = _redge_cov_functional(theta, noise, u, n_steps, t1, exact, hard,
                                        logits.shape)
        else:
            out = _ReDGECov.apply(theta, noise, u, n_steps, t1, exact, hard, logits.shape)[0]
    else:
        fn = _ReDGE if functional_mode() else _ReDGE_EAGER
        out = fn.apply(logits.to(dt), noise, u, n_steps, t1, variant, exact, hard)[0]
    return out.to(logits.dtype)
