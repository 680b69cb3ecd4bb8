"""Ancestral (carry-over unmasking) sampler of an absorbing masked diffusion.

The model is any callable mapping tokens ``(B, L)`` (integer ids, the mask id marking
masked positions) to logits ``(B, L, V)`` over the ``V`` token ids it can emit; our
:class:`~samplegrad.discrete.Denoiser` or your own (a Hugging Face masked LM's
``lambda x: model(x).logits``, ...). The mask id may lie inside the vocabulary (a ``[MASK]``
token of the model's own; it is then never drawn) or be ``V`` (our convention).

Unmasking schedule on a uniform time grid ``1 = t_0 > t_1 > ... > t_n = 0``: ``m(t)`` is the
expected fraction of still-masked positions at time ``t`` (default ``m(t) = t``, the linear
schedule; e.g. ``lambda t: 1 - math.cos(math.pi * t / 2)`` for the cosine one). From ``t``
to ``s < t`` every masked position is revealed with probability ``(m(t) - m(s)) / m(t)``
and its token drawn from the model's categorical (or from guided logits ``q``); revealed
and clamped (given) tokens are never changed, and the last step reveals everything.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from samplegrad._config import check_int, check_real
from samplegrad._validation import validation_enabled
from samplegrad.diffusion._checks import check_generator, shape_str
from samplegrad.discrete.model import check_tokens

# guide(p_logits (B, L, V), x (B, L), t, s) -> q_logits (B, L, V); only masked rows are used
Guide = Callable[[Tensor, Tensor, float, float], Tensor]
LogitsModel = Callable[[Tensor], Tensor]
"""``logits = model(x (B, L) long) -> (B, L, V)``."""
Schedule = Callable[[float], float]
"""``m(t)``: expected fraction of masked positions at time ``t`` in [0, 1]."""

__all__ = ["Guide", "LogitsModel", "Schedule", "categorical_draw", "initial_tokens",
           "kl_categorical", "sample", "unmask_step"]


def categorical_draw(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row by Gumbel-max: ``(..., V)`` -> ``(...)`` int64 (-inf never drawn)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    e = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)  # Exp(1)
    g = -torch.log(e)  # Gumbel(0, 1)
    return (logits.float() + g).argmax(-1)


def unmask_step(x: Tensor, logits: Tensor, t: float, s: float, mask_id: int,
                generator: torch.Generator | None = None, *,
                p_reveal: float | None = None) -> Tensor:
    """Reveal each masked position of ``x`` ``(B, L)`` w.p. ``p_reveal`` (default ``(t - s) /
    t``, the linear schedule) with a token drawn from ``logits`` ``(B, L, V)``; unmasked
    positions are carried over unchanged; at ``s == 0`` everything is revealed."""
    if not (isinstance(t, numbers.Real) and isinstance(s, numbers.Real)
            and 0.0 <= s < t <= 1.0):
        raise ValueError(f"t: need 0 <= s < t <= 1; got t={t!r}, s={s!r}")
    if p_reveal is None:
        p_reveal = (t - s) / t
    check_real(p_reveal, "p_reveal", ge=0, le=1)
    masked = x == mask_id
    reveal = masked & (torch.rand(x.shape, generator=generator, device=x.device) < p_reveal)
    if s == 0.0:
        reveal = masked
    return torch.where(reveal, categorical_draw(logits, generator), x)


def kl_categorical(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    """Analytic ``KL(Cat(q) || Cat(p))`` over the last axis: ``(..., V)`` -> ``(...)``."""
    lq = torch.log_softmax(q_logits, -1)
    lp = torch.log_softmax(p_logits, -1)
    return (lq.exp() * (lq - lp)).nan_to_num(0.0, 0.0, 0.0).sum(-1)


def _config(model: Any) -> Any:
    return getattr(model, "config", None)


def _model_device(model: Any) -> torch.device | None:
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return None


def _mask_id(model: Any, mask_id: int | None) -> int:
    if mask_id is None:
        mask_id = getattr(_config(model), "mask_id", None)
        if mask_id is None:
            raise ValueError("mask_id: give the mask token id of your model (it has no "
                             ".config.mask_id)")
    return check_int(mask_id, "mask_id", 0)


def initial_tokens(model: Any, batch_size: int | None = None, given: Tensor | None = None,
                   *, mask_id: int | None = None, seq_len: int | None = None,
                   device: torch.device | str | None = None) -> Tensor:
    """All-[MASK] start ``(B, L)``, with ``given`` ``(B, L)`` or ``(L,)`` tokens clamped (the
    mask id marks free positions). ``mask_id``/``seq_len`` default to ``model.config``'s
    (our :class:`~samplegrad.discrete.Denoiser`); ``seq_len`` also comes from ``given``. On
    ``device``, else the model's parameters' device, else ``given``'s, else torch's default."""
    cfg = _config(model)
    mask_id = _mask_id(model, mask_id)
    if device is None:
        device = _model_device(model)
    if device is None and isinstance(given, Tensor):
        device = given.device
    if seq_len is None:
        seq_len = getattr(cfg, "seq_len", None)
    if seq_len is not None:
        check_int(seq_len, "seq_len", 1)
    if batch_size is not None:
        check_int(batch_size, "batch_size", 1)
    if given is None:
        if batch_size is None:
            raise ValueError("batch_size: must be a positive int when given is None; got None")
        if seq_len is None:
            raise ValueError("seq_len: give the sequence length (or given=, or a model with "
                             ".config.seq_len)")
        return torch.full((batch_size, seq_len), mask_id, dtype=torch.long, device=device)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is not None and mask_id == vocab:  # our convention: ids 0..V-1, mask id V
        given = check_tokens(given, vocab, seq_len, name="given")
    else:  # the vocabulary size is checked against the model's logits in _denoise
        given = check_tokens(given, None, seq_len, name="given")
    given = given.to(device)
    if given.ndim == 1:
        given = given.expand(batch_size or 1, -1)
    if given.ndim != 2 or (batch_size is not None and given.shape[0] != batch_size):
        raise ValueError(f"given must be shaped (L,) or (batch_size, L); got "
                         f"{tuple(given.shape)} with batch_size={batch_size}")
    return given.clone()


def _denoise(model: LogitsModel, x: Tensor, mask_id: int) -> Tensor:
    """The model's logits ``(B, L, V)`` as float, checked; a mask id inside the vocabulary
    gets logit -inf (never drawn)."""
    with torch.no_grad():
        logits = model(x)
    if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != x.shape \
            or logits.shape[2] < 1 or not logits.is_floating_point():
        raise ValueError(f"model: must map tokens (B, L) = {tuple(x.shape)} to float logits "
                         f"(B, L, V), got {shape_str(logits)}")
    logits = logits.float()
    v = logits.shape[2]
    if mask_id < v:
        logits = logits.clone()
        logits[..., mask_id] = -math.inf
    if validation_enabled():
        if bool(torch.isnan(logits).any()) or bool((logits == math.inf).any()):
            raise ValueError("model: returned NaN or +inf logits")
        if bool((logits.amax(-1) == -math.inf).any()):
            raise ValueError("model: returned a position whose logits are all -inf (besides "
                             "the mask id): nothing to draw")
        bad = (x != mask_id) & ((x < 0) | (x >= v))
        if bool(bad.any()):
            raise ValueError(f"given: has token ids outside 0..{v - 1} (the model's logits "
                             f"have V = {v}) that are not the mask id {mask_id}")
    return logits


def _fractions(schedule: Schedule | None, n_steps: int) -> list[float]:
    """``m(t_k)`` on the grid ``t_k = 1 - k / n``, validated: finite, in [0, 1], positive at
    the start, non-increasing; the last one is forced to 0 (the last step reveals all)."""
    times = [1.0 - k / n_steps for k in range(n_steps)] + [0.0]
    if schedule is None:
        return times
    if not callable(schedule):
        raise TypeError(f"schedule: must be a callable m(t) -> masked fraction, got "
                        f"{type(schedule).__name__}")
    fr = []
    for t in times:
        m = schedule(t)
        m = float(m.item()) if isinstance(m, Tensor) and m.numel() == 1 else m
        if isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0.0 <= m <= 1.0:
            raise ValueError(f"schedule: must return a masked fraction in [0, 1], got {m!r} "
                             f"at t={t}")
        fr.append(float(m))
    if fr[0] <= 0.0:
        raise ValueError(f"schedule: m(1) must be > 0 (everything starts masked), got {fr[0]}")
    if any(b > a for a, b in zip(fr, fr[1:])):
        raise ValueError("schedule: the masked fraction m(t) must not increase as t decreases")
    fr[-1] = 0.0
    return fr


def sample(model: LogitsModel, n_steps: int, *, batch_size: int | None = None,
           given: Tensor | None = None, generator: torch.Generator | None = None,
           guide: Guide | None = None, temperature: float = 1.0,
           return_kl: bool = False, mask_id: int | None = None, seq_len: int | None = None,
           schedule: Schedule | None = None,
           device: torch.device | str | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Draw sequences ``(B, L)`` in ``n_steps`` unmasking steps.

    ``model``: tokens ``(B, L)`` -> logits ``(B, L, V)`` (any callable; an ``nn.Module`` is
    put in eval mode). ``mask_id`` / ``seq_len`` default to ``model.config``'s. ``given``
    clamps tokens (mask id = free). ``schedule``: the masked fraction ``m(t)`` (default
    linear). ``guide`` replaces the model's logits of the masked positions at each step. With
    ``return_kl`` also returns the expected path KL ``(B,)`` of the guided to the unguided
    sampler along the run: the sum over steps and masked positions of ``P(revealed now) *
    KL(q_i || p_i)`` (0 without a guide; it upper-bounds the KL between the final samples'
    laws, averaged over the run). Tokens live on ``device``, else the model's parameters',
    else ``given``'s device; ``generator`` must live there too.
    """
    check_int(n_steps, "n_steps", 1)
    check_real(temperature, "temperature", gt=0)
    if not callable(model):
        raise TypeError(f"model: must be callable (tokens (B, L) -> logits (B, L, V)), got "
                        f"{type(model).__name__}")
    if guide is not None and not callable(guide):
        raise TypeError(f"guide: must be callable or None, got {type(guide).__name__}")
    if not isinstance(return_kl, bool):
        raise ValueError(f"return_kl: must be True or False, got {return_kl!r}")
    fractions = _fractions(schedule, n_steps)
    if isinstance(model, nn.Module):
        model.eval()
    mask_id = _mask_id(model, mask_id)
    x = initial_tokens(model, batch_size, given, mask_id=mask_id, seq_len=seq_len,
                       device=device)
    check_generator(generator, x.device)
    path_kl = torch.zeros(x.shape[0], device=x.device)
    times = [1.0 - k / n_steps for k in range(n_steps)] + [0.0]
    for k, (t, s) in enumerate(zip(times[:-1], times[1:])):
        masked = x == mask_id
        if not bool(masked.any()):
            break
        m_t, m_s = fractions[k], fractions[k + 1]
        p_reveal = 1.0 if s == 0.0 or m_t <= 0.0 else (m_t - m_s) / m_t
        logits = _denoise(model, x, mask_id) / temperature
        if guide is not None:
            q = guide(logits, x, t, s)
            if not isinstance(q, Tensor) or q.shape != logits.shape:
                raise ValueError(f"guide: must return logits shaped {tuple(logits.shape)}, got "
                                 f"{shape_str(q)}")
            q = q.detach().float()
            if validation_enabled() and (bool(torch.isnan(q).any())
                                         or bool((q == math.inf).any())):
                raise ValueError("guide: returned NaN or +inf logits")
            if return_kl:
                kl = kl_categorical(q, logits) * masked
                path_kl += kl.sum(-1) * p_reveal
            logits = q
        x = unmask_step(x, logits, t, s, mask_id, generator, p_reveal=p_reveal)
    return (x, path_kl) if return_kl else x
