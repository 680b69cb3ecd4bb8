"""ReDGE: categorical reparameterization through a training-free DDIM sampler.

Forward process on one-hot vectors ``x_t = alpha_t x_0 + sigma_t eps`` with the linear
schedule ``alpha_t = 1 - t``; the prior is exactly ``Cat(softmax(logits))``, so the denoiser
``E[x_0 | x_t] = softmax(logits + alpha_t / sigma_t**2 * x_t)`` is closed form. A few
deterministic DDIM steps carry a Gaussian seed to the endpoint ``t1``; the soft sample is
the denoiser there, the hard sample a one-hot draw, and the gradient is pathwise through
every DDIM step (see METHODS.md section 1).

Speed and memory: the sampler runs inside one autograd Function that saves only the seed
(``O(1)`` tensors whatever ``n_steps``) and recomputes the path in backward, with the
vector-Jacobian products of the paper and ``"max"`` variants written out by hand.
"""

from __future__ import annotations

import torch

from samplegrad.categorical._checks import check_logits, check_n_steps, check_t1, compute_dtype
from samplegrad.categorical._sampling import sample_one_hot

VARIANTS = ("paper", "cov", "max")
_MIN_VAR = 0.1  # variance floor of the moment-matched ("cov") forward model


def schedule(n_steps: int, t1: float) -> tuple[list[float], list[float]]:
    """The reference grid: ``alpha = [1, linspace(1 - t1, 1e-4, n_steps - 1)]``, ``sigma = 1 - alpha``.

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


def _softmax_vjp(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``J_softmax(p)^T g = p * (g - <g, p>)``."""
    return p * (g - (g * p).sum(-1, keepdim=True))


def _paper_path(theta: torch.Tensor, x: torch.Tensor, c: list[float], a: list[float],
                b: list[float], keep: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """DDIM from ``x`` at index ``n-1`` down to index 1; returns (x_1, [p_{n-1}, ..., p_2])."""
    ps: list[torch.Tensor] = []
    for i in range(len(c) - 1, 1, -1):
        p = torch.softmax(torch.add(theta, x, alpha=c[i]), -1)
        if keep:
            ps.append(p)
        x = torch.add(p, x, alpha=b[i] / a[i]).mul_(a[i]) if a[i] != 0 else x * b[i]
    return x, ps


def _paper_invert(theta: torch.Tensor, x1: torch.Tensor, c: list[float], a: list[float],
                  b: list[float]) -> torch.Tensor:
    """DDIM inversion: the seed whose DDIM path passes (approximately) through ``x1``.

    Each step inverts ``x_{i-1} = a_i p + b_i x_i`` with ``p`` evaluated at ``x_{i-1}``.
    """
    x = x1
    for i in range(2, len(c)):
        p = torch.softmax(torch.add(theta, x, alpha=c[i - 1]), -1)
        x = (x - a[i] * p) / b[i]
    return x


def _cov_forward_model(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(theta, -1)
    return probs, (probs * (1 - probs)).clamp(min=_MIN_VAR)


def _cov_denoise(theta, probs, var, x, alpha, sigma):
    """Posterior mean if ``x_t | x_0 ~ N(alpha x_0 + sigma probs, sigma^2 diag var)``."""
    return torch.softmax(theta + (alpha * x - alpha * sigma * probs - alpha**2 / 2)
                         / (var * sigma**2), -1)


def _cov_soft(theta: torch.Tensor, x: torch.Tensor, n_steps: int, t1: float,
              from_seed: bool) -> torch.Tensor:
    """The "cov" sampler, differentiable (used under autograd in backward only)."""
    al, si = schedule(n_steps, t1)
    probs, var = _cov_forward_model(theta)
    if from_seed:
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


class _ReDGE(torch.autograd.Function):
    """Returns ``(soft, hard)``; backward maps ``d soft`` to ``d logits`` through the path."""

    @staticmethod
    def forward(ctx, logits, noise, n_steps: int, t1: float, variant: str, exact: bool):
        dtype = compute_dtype(logits)
        theta = logits.detach().to(dtype)
        noise = noise.to(dtype)
        c, a, b = _coefficients(n_steps, t1)
        al, si = schedule(n_steps, t1)
        with torch.no_grad():
            if exact:
                # draw (h, x_t1) from the exact joint: h ~ Cat(pi), x_t1 | h from the forward
                # model; then soft = E[x_0 | x_t1] and h | x_t1 ~ Cat(soft) exactly.
                probs = torch.softmax(theta, -1)
                hard = sample_one_hot(probs)
                if variant == "cov":
                    var = (probs * (1 - probs)).clamp(min=_MIN_VAR)
                    x1 = al[1] * hard + si[1] * (probs + var.sqrt() * noise)
                    soft = _cov_denoise(theta, probs, var, x1, al[1], si[1])
                else:
                    x1 = torch.add(hard, noise, alpha=si[1] / al[1]).mul_(al[1]) \
                        if al[1] > 0 else si[1] * noise
                    soft = torch.softmax(torch.add(theta, x1, alpha=c[1]), -1)
                state = x1
            else:
                if variant == "cov":
                    soft = _cov_soft(theta, noise, n_steps, t1, from_seed=True)
                else:
                    x1, _ = _paper_path(theta, noise, c, a, b, keep=False)
                    soft = torch.softmax(torch.add(theta, x1, alpha=c[1]), -1)
                hard = sample_one_hot(soft)
                state = noise
        ctx.save_for_backward(theta, state, soft, hard)
        ctx.cfg = (n_steps, t1, variant, exact, logits.dtype)
        ctx.mark_non_differentiable(hard)
        return soft.to(logits.dtype), hard.to(logits.dtype)

    @staticmethod
    def backward(ctx, g_soft, _g_hard):
        theta, state, soft, hard = ctx.saved_tensors
        n_steps, t1, variant, exact, out_dtype = ctx.cfg
        g = g_soft.to(theta.dtype)
        if variant == "cov":
            seed = _cov_invert(theta, state, n_steps, t1) if exact else state
            with torch.enable_grad():
                th = theta.detach().requires_grad_(True)
                s = _cov_soft(th, seed, n_steps, t1, from_seed=True)
                (grad,) = torch.autograd.grad(s, th, g)
            return grad.to(out_dtype), None, None, None, None, None
        c, a, b = _coefficients(n_steps, t1)
        seed = _paper_invert(theta, state, c, a, b) if exact else state
        x1, ps = _paper_path(theta, seed, c, a, b, keep=True)
        s1 = soft if not exact else torch.softmax(torch.add(theta, x1, alpha=c[1]), -1)
        u = _softmax_vjp(s1, g)
        if variant == "max":  # ReinMax-style: half the final-step term plus <g, d> d
            d = hard - soft
            grad = 0.5 * u + 0.5 * (g * d).sum(-1, keepdim=True) * d
        else:
            grad = u.clone()
        gx = c[1] * u
        for k, i in enumerate(range(2, n_steps)):
            p = ps[len(ps) - 1 - k]  # ps holds p_{n-1}, ..., p_2
            ui = _softmax_vjp(p, a[i] * gx)
            grad += ui
            gx = b[i] * gx + c[i] * ui
        return grad.to(out_dtype), None, None, None, None, None


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
            the gradient is the DDIM pathwise gradient from the seed that DDIM inversion assigns
            to ``x_t1``. The default (``False``) follows the reference: the DDIM path only
            approximates the marginal of ``x_t1``, so hard samples are biased at small n_steps.
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
    if noise is None:
        noise = torch.randn(logits.shape, dtype=compute_dtype(logits), device=logits.device)
    elif noise.shape != logits.shape:
        raise ValueError(f"noise must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(noise.shape)}")
    soft, one_hot = _ReDGE.apply(logits, noise, n_steps, t1, variant, bool(exact))
    if not hard:
        return soft
    return one_hot + (soft - soft.detach())
