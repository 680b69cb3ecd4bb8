"""ReDGE: categorical reparameterization through a training-free DDIM sampler.

Forward process on one-hot vectors ``x_t = alpha_t x_0 + sigma_t eps`` with the linear
schedule ``alpha_t = 1 - t``; the prior is exactly ``Cat(softmax(logits))``, so the denoiser
``E[x_0 | x_t] = softmax(logits + alpha_t / sigma_t**2 * x_t)`` is closed form. A few
deterministic DDIM steps carry a Gaussian seed to the endpoint ``t1``; the soft sample is
the denoiser there, the hard sample a one-hot draw, and the gradient is pathwise through
every DDIM step (see docs/methods.md#redge).

Speed and memory: the sampler runs inside one autograd Function that saves only the seed
(``O(1)`` tensors whatever ``n_steps``) and recomputes the path in backward, with the
vector-Jacobian products of the paper and ``"max"`` variants written out by hand.
"""

from __future__ import annotations

import threading

import torch

from samplegrad.categorical._checks import check_logits, check_n_steps, check_t1, compute_dtype
from samplegrad.categorical._sampling import (
    from_kn,
    one_hot,
    one_hot_kn,
    sample_index_kn,
    softmax_kn,
    softmax_kn_,
    softmax_vjp_kn_,
    to_kn,
)

VARIANTS = ("paper", "cov", "max")
_MIN_VAR = 0.1  # variance floor of the moment-matched ("cov") forward model


def schedule(n_steps: int, t1: float) -> tuple[list[float], list[float]]:
    """Reference grid ``alpha = [1, linspace(1 - t1, 1e-4, n_steps - 1)]``, ``sigma = 1 - alpha``.

    Index 0 is the data end, index ``n_steps - 1`` the noise end; the sampler calls the
    denoiser at indices ``n_steps - 1, ..., 1`` (``n_steps - 1`` calls) and stops at index 1
    (``t = t1``).
    """
    alphas = [1.0] + torch.linspace(1.0 - t1, 1e-4, n_steps - 1, dtype=torch.float64).tolist()
    return alphas, [1.0 - a for a in alphas]


def _coefficients(n_steps: int, t1: float) -> tuple[list[float], list[float], list[float]]:
    """``c_i = alpha_i / sigma_i^2`` and the DDIM step ``x_{i-1} = a_i p_i + b_i x_i``."""
    al, si = schedule(n_steps, t1)
    c = [al[i] / si[i] ** 2 if si[i] > 0 else float("inf") for i in range(n_steps)]
    a = [0.0, 0.0] + [al[i - 1] - si[i - 1] * al[i] / si[i] for i in range(2, n_steps)]
    b = [0.0, 0.0] + [si[i - 1] / si[i] for i in range(2, n_steps)]
    return c, a, b


def _paper_path(theta: torch.Tensor, seed: torch.Tensor, c: list[float], a: list[float],
                b: list[float], keep: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM from ``seed`` at index ``n-1`` down to index 1 in ``(K, N)`` layout; returns x_1.

    ``keep``, if given, is a ``(n-2, K, N)`` buffer that receives ``p_{n-1}, ..., p_2``.
    Works in place on two buffers: PyTorch's CPU allocator returns mid-sized blocks to the
    OS, so every fresh tensor costs page faults; fewer allocations is most of the speed.
    """
    x = seed.clone()
    z = torch.empty_like(x) if keep is None else None
    for j, i in enumerate(range(len(c) - 1, 1, -1)):
        p = z if keep is None else keep[j]
        softmax_kn_(torch.add(theta, x, alpha=c[i], out=p))
        x.add_(p, alpha=a[i] / b[i]).mul_(b[i])
    return x


def _paper_invert(theta: torch.Tensor, x1: torch.Tensor, c: list[float], a: list[float],
                  b: list[float], keep: torch.Tensor) -> None:
    """DDIM inversion from ``x1`` up to the seed, filling ``keep`` like :func:`_paper_path`.

    Each step inverts ``x_{i-1} = a_i p + b_i x_i`` with ``p`` evaluated at ``x_{i-1}``; the
    denoiser outputs ``p_i`` at the inverted states are written to ``keep`` (``p_{n-1}``
    first), so the backward pass differentiates the DDIM steps along a path through ``x1``.
    """
    n = len(c)
    x = x1.clone()
    p = torch.empty_like(x)
    for i in range(2, n):
        out = keep[n - 1 - (i - 1)] if i - 1 >= 2 else p  # p_{i-1} at the state x_{i-1}
        softmax_kn_(torch.add(theta, x, alpha=c[i - 1], out=out))
        x.add_(out, alpha=-a[i]).div_(b[i])
    if n > 2:
        softmax_kn_(torch.add(theta, x, alpha=c[n - 1], out=keep[0]))


def _cov_forward_model(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = softmax_kn(theta)
    return probs, (probs * (1 - probs)).clamp(min=_MIN_VAR)


def _cov_denoise(theta, probs, var, x, alpha, sigma):
    """Posterior mean if ``x_t | x_0 ~ N(alpha x_0 + sigma probs, sigma^2 diag var)``."""
    return softmax_kn(theta + (alpha * x - alpha * sigma * probs - alpha**2 / 2)
                      / (var * sigma**2))


def _cov_soft(theta: torch.Tensor, x: torch.Tensor, n_steps: int, t1: float) -> torch.Tensor:
    """The "cov" sampler from a standard-normal seed, differentiable (autograd)."""
    al, si = schedule(n_steps, t1)
    probs, var = _cov_forward_model(theta)
    x = probs + var.sqrt() * x
    for i in range(n_steps - 1, 1, -1):
        p = _cov_denoise(theta, probs, var, x, al[i], si[i])
        x = al[i - 1] * p + si[i - 1] * (x - al[i] * p) / si[i]
    return _cov_denoise(theta, probs, var, x, al[1], si[1])


def _cov_invert(theta: torch.Tensor, x1: torch.Tensor, n_steps: int, t1: float) -> torch.Tensor:
    al, si = schedule(n_steps, t1)
    probs, var = _cov_forward_model(theta)
    x = x1
    for i in range(2, n_steps):
        p = _cov_denoise(theta, probs, var, x, al[i - 1], si[i - 1])
        x = (x - (al[i - 1] - si[i - 1] * al[i] / si[i]) * p) * (si[i] / si[i - 1])
    return (x - probs) / var.sqrt()


_WORKSPACE = threading.local()


def _workspace(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A scratch buffer reused across backward calls (per thread and dtype, grown on demand).

    Fresh memory from the CPU allocator is page-faulted on first touch, which costs more than
    the arithmetic here; reusing one buffer keeps the backward pass arithmetic-bound. It holds
    the path's intermediate softmaxes only during a backward call and is never part of the
    autograd graph. ``torch.cuda`` tensors are not cached (their allocator already caches).
    """
    numel = 1
    for s in shape:
        numel *= s
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    cache = _WORKSPACE.__dict__.setdefault("buffers", {})  # one set per thread
    buf = cache.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        cache[dtype] = buf
    return buf[:numel].view(shape)


class _ReDGE(torch.autograd.Function):
    """``(K, N)`` logits and seed -> hard (or soft) sample; saves O(1) tensors for backward.

    The backward maps the gradient at the output to the logits as if it were the gradient at
    the soft sample (straight-through), through every DDIM step.
    """

    @staticmethod
    def forward(ctx, theta, noise, n_steps: int, t1: float, variant: str, exact: bool,
                hard_out: bool, shape: torch.Size):
        theta = theta.detach()
        c, a, b = _coefficients(n_steps, t1)
        al, si = schedule(n_steps, t1)
        k = theta.shape[0]
        if exact:
            # draw (h, x_t1) from the exact joint: h ~ Cat(pi), x_t1 | h from the forward
            # model; then soft = E[x_0 | x_t1] and h | x_t1 ~ Cat(soft) exactly.
            probs = softmax_kn(theta)
            idx = sample_index_kn(probs)
            hard = one_hot_kn(idx, k, theta.dtype)
            if variant == "cov":
                var = (probs * (1 - probs)).clamp(min=_MIN_VAR)
                x1 = al[1] * hard + si[1] * (probs + var.sqrt() * noise)
                soft = _cov_denoise(theta, probs, var, x1, al[1], si[1])
            else:
                x1 = torch.add(si[1] * noise, hard, alpha=al[1])
                soft = softmax_kn(torch.add(theta, x1, alpha=c[1]))
            state = x1
        else:
            if variant == "cov":
                soft = _cov_soft(theta, noise, n_steps, t1)
            else:
                x1 = _paper_path(theta, noise, c, a, b)
                soft = softmax_kn_(x1.mul_(c[1]).add_(theta))
            idx = sample_index_kn(soft)
            state = noise
        ctx.save_for_backward(theta, state, soft, idx)
        ctx.cfg = (n_steps, t1, variant, exact)
        # the hard output carries the soft sample's gradient (straight-through)
        return one_hot(idx, shape, theta.dtype) if hard_out else from_kn(soft, shape)

    @staticmethod
    def backward(ctx, g):
        theta, state, soft, idx = ctx.saved_tensors
        n_steps, t1, variant, exact = ctx.cfg
        g = to_kn(g)
        none = (None,) * 7
        if variant == "cov":
            seed = _cov_invert(theta, state, n_steps, t1) if exact else state
            with torch.enable_grad():
                th = theta.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(_cov_soft(th, seed, n_steps, t1), th, g)
            return (grad, *none)
        c, a, b = _coefficients(n_steps, t1)
        ps = _workspace((max(n_steps - 2, 0), *theta.shape), theta.dtype, theta.device)
        if exact:  # the path through the exact x_t1, by DDIM inversion
            _paper_invert(theta, state, c, a, b, keep=ps)
        else:
            _paper_path(theta, state, c, a, b, keep=ps)  # ps = [p_{n-1}, ..., p_2]
        s1 = soft
        if variant == "max":  # ReinMax-style: half the final-step term plus <g, d> d
            d = one_hot_kn(idx, theta.shape[0], theta.dtype).sub_(soft)
            grad = d.mul_(0.5 * (g * d).sum(0, keepdim=True))
            u = softmax_vjp_kn_(s1, g)
            grad.add_(u, alpha=0.5)
        else:
            u = softmax_vjp_kn_(s1, g)
            grad = u.clone()
        gx = u.mul_(c[1])
        ui = torch.empty_like(gx)
        for j, i in enumerate(range(2, n_steps)):
            softmax_vjp_kn_(ps[n_steps - 3 - j], torch.mul(gx, a[i], out=ui))
            grad += ui
            gx.mul_(b[i]).add_(ui, alpha=c[i])
        return (grad, *none)


def redge(logits: torch.Tensor, n_steps: int = 5, t1: float = 0.5, hard: bool = True, *,
          variant: str = "paper", exact: bool = False,
          noise: torch.Tensor | None = None) -> torch.Tensor:
    """ReDGE sample of ``Cat(softmax(logits))`` with a diffusion pathwise gradient.

    Args:
        logits: ``(*batch, K)`` unnormalized log-probabilities; ``-inf`` masks a class.
        n_steps: grid points of the sampler (``n_steps - 1`` denoiser calls), >= 2.
        t1: endpoint in (0, 1], a temperature: ``t1 = 1`` is straight-through, small ``t1``
            gives nearly one-hot soft samples.
        hard: return the one-hot sample with the soft sample's gradient
            (``h + s - s.detach()``); ``False`` returns the soft sample ``s`` (on the simplex).
        variant: ``"paper"`` (Gaussian seed, exact posterior denoiser), ``"cov"`` (moment-
            matched seed and denoiser), or ``"max"`` (ReinMax-style correction; hard only).
        exact: draw hard samples exactly from ``Cat(softmax(logits))`` for every ``n_steps``
            and ``t1``. The pair (hard, x_t1) is drawn from the exact joint of the forward model
            (``h ~ Cat(pi)``, then ``x_t1 = alpha h + sigma eps``), the soft sample is the exact
            posterior mean ``E[x_0 | x_t1]`` (so ``h | x_t1 ~ Cat(soft)`` as in the default), and
            the gradient is the DDIM pathwise gradient along the path that DDIM inversion
            draws from ``x_t1`` back to a Gaussian seed. The default (``False``) follows the
            reference: the DDIM path only approximates the marginal of ``x_t1``, so hard
            samples are biased at small n_steps. Because the posterior at the exact ``x_t1`` is
            sharper than at the DDIM approximation, ``exact=True`` wants a larger ``t1``
            (about 0.3 or more): at ``t1 = 0.1`` soft samples are nearly one-hot and the
            gradient nearly vanishes, as for Gumbel-softmax at a tiny temperature.
        noise: optional Gaussian seed, shaped like ``logits`` (default: ``torch.randn``).

    Returns:
        ``(*batch, K)`` tensor in ``logits.dtype``.
    """
    check_logits(logits)
    n_steps = check_n_steps(n_steps)
    t1 = check_t1(t1)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "max" and not hard:
        raise ValueError("variant='max' corrects the hard sample's gradient; use hard=True")
    dt = compute_dtype(logits)
    theta = to_kn(logits.to(dt))
    if noise is None:
        noise = torch.randn(theta.shape, dtype=dt, device=logits.device)
    elif noise.shape != logits.shape:
        raise ValueError(f"noise must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(noise.shape)}")
    else:
        noise = to_kn(noise.to(dt))
    out = _ReDGE.apply(theta, noise, n_steps, t1, variant, bool(exact), bool(hard),
                       logits.shape)
    return out.to(logits.dtype)
