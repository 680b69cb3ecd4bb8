"""Ancestral (carry-over unmasking) sampler of the absorbing masked diffusion.

Linear schedule on a uniform grid ``1 = t_0 > t_1 > ... > t_n = 0``. From ``t`` to
``s < t`` every still-masked position is revealed with probability ``(t - s) / t`` and its
token drawn from the denoiser's categorical (or from guided logits ``q``); revealed and
clamped (given) tokens are never changed, and the last step reveals everything.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from samplegrad.discrete.model import check_tokens

# guide(p_logits (B, L, V), x (B, L), t, s) -> q_logits (B, L, V); only masked rows are used
Guide = Callable[[Tensor, Tensor, float, float], Tensor]


def categorical_draw(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row by Gumbel-max: ``(..., V)`` -> ``(...)`` int64 (-inf never drawn)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    e = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)  # Exp(1)
    g = -torch.log(e)  # Gumbel(0, 1)
    return (logits.float() + g).argmax(-1)


def unmask_step(x: Tensor, logits: Tensor, t: float, s: float, mask_id: int,
                generator: torch.Generator | None = None) -> Tensor:
    """Reveal each masked position of ``x`` ``(B, L)`` w.p. ``(t - s) / t`` with a token drawn
    from ``logits`` ``(B, L, V)``; unmasked positions are carried over unchanged."""
    if not 0.0 <= s < t <= 1.0:
        raise ValueError(f"need 0 <= s < t <= 1; got t={t}, s={s}")
    masked = x == mask_id
    reveal = masked & (torch.rand(x.shape, generator=generator, device=x.device) < (t - s) / t)
    if s == 0.0:
        reveal = masked
    return torch.where(reveal, categorical_draw(logits, generator), x)


def kl_categorical(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    """Analytic ``KL(Cat(q) || Cat(p))`` over the last axis: ``(..., V)`` -> ``(...)``."""
    lq = torch.log_softmax(q_logits, -1)
    lp = torch.log_softmax(p_logits, -1)
    return (lq.exp() * (lq - lp)).nan_to_num(0.0, 0.0, 0.0).sum(-1)


def initial_tokens(model: nn.Module, batch_size: int | None = None,
                   given: Tensor | None = None) -> Tensor:
    """All-[MASK] start ``(B, L)``, with ``given`` ``(B, L)`` or ``(L,)`` tokens clamped
    (the mask id marks free positions). On the device of the model's parameters."""
    cfg = model.config
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    if given is None:
        if batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int when given is None; "
                             f"got {batch_size!r}")
        return torch.full((batch_size, cfg.seq_len), cfg.mask_id, dtype=torch.long,
                          device=device)
    given = check_tokens(given, cfg.vocab_size, cfg.seq_len, name="given").to(device)
    if given.ndim == 1:
        given = given.expand(batch_size or 1, -1)
    if given.ndim != 2 or (batch_size is not None and given.shape[0] != batch_size):
        raise ValueError(f"given must be shaped (L,) or (batch_size, L); got "
                         f"{tuple(given.shape)} with batch_size={batch_size}")
    return given.clone()


@torch.no_grad()
def _denoise(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).float()


def sample(model: nn.Module, n_steps: int, *, batch_size: int | None = None,
           given: Tensor | None = None, generator: torch.Generator | None = None,
           guide: Guide | None = None, temperature: float = 1.0,
           return_kl: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Draw sequences ``(B, L)`` in ``n_steps`` unmasking steps.

    ``given`` clamps tokens (mask id = free). ``guide`` replaces the model's logits of the
    masked positions at each step. With ``return_kl`` also returns the expected path KL
    ``(B,)`` of the guided to the unguided sampler along the run: the sum over steps and
    masked positions of ``P(revealed now) * KL(q_i || p_i)`` (0 without a guide; it upper-
    bounds the KL between the final samples' laws, averaged over the run).
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int; got {n_steps!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    model.eval()
    mask_id = model.config.mask_id
    x = initial_tokens(model, batch_size, given)
    path_kl = torch.zeros(x.shape[0], device=x.device)
    times = [1.0 - k / n_steps for k in range(n_steps)] + [0.0]
    for t, s in zip(times[:-1], times[1:]):
        masked = x == mask_id
        if not bool(masked.any()):
            break
        logits = _denoise(model, x) / temperature
        if guide is not None:
            q = guide(logits, x, t, s).detach()
            if return_kl:
                kl = kl_categorical(q, logits) * masked
                path_kl += kl.sum(-1) * (1.0 if s == 0.0 else (t - s) / t)
            logits = q
        x = unmask_step(x, logits, t, s, mask_id, generator)
    return (x, path_kl) if return_kl else x
