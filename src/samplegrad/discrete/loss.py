"""The masked-diffusion training loss (MDLM / MD4 with the linear schedule).

Forward process: each token is independently replaced by [MASK] with probability ``t``
(``alpha_t = 1 - t`` is the probability of staying clean). With ``t ~ U(0, 1)`` the
negative ELBO per sequence is ``E_t[(1/t) * sum over masked positions of -log p(x_0 | x_t)]``
(the schedule weight ``-alpha_t' / (1 - alpha_t) = 1/t``). ``weighting="unweighted"`` drops
the ``1/t`` factor (plain cross-entropy on masked positions, averaged over them), a lower
variance surrogate with the same minimizer.

Infilling (``keep``): positions marked ``keep`` (clues) are never masked nor scored; the
negative ELBO is then that of the free tokens given the clues, per free token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from samplegrad.diffusion._checks import shape_str
from samplegrad.discrete.model import check_tokens

WEIGHTINGS = ("elbo", "unweighted")


def mask_tokens(x0: Tensor, t: Tensor, mask_id: int,
                generator: torch.Generator | None = None,
                keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mask each token of ``x0`` ``(B, L)`` w.p. ``t`` ``(B,)`` -> ``(x_t, masked)`` (B, L);
    positions where the bool ``keep`` ``(B, L)`` is True are never masked."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    masked = u < t[:, None]
    if keep is not None:
        masked = masked & ~keep
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def masked_diffusion_loss(model: nn.Module, x0: Tensor, *, weighting: str = "elbo",
                          t_min: float = 1e-3,
                          generator: torch.Generator | None = None,
                          shard: slice | None = None,
                          keep: Tensor | None = None) -> Tensor:
    """Scalar loss on clean tokens ``x0`` ``(B, L)``: negative ELBO per token (``"elbo"``)
    or masked-token cross-entropy (``"unweighted"``). ``model(x_t)`` -> ``(B, L, V)``.

    ``t`` is drawn by stratified ("antithetic") sampling over the batch for lower variance.
    ``shard`` (data parallelism, see :mod:`samplegrad.distributed`): ``x0`` is the global
    batch, ``t`` and the masks are drawn for all of it, only ``x0[shard]`` goes through the
    model, and the result is this shard's share of the global loss (the shares sum to it).
    ``keep`` (bool ``(B, L)``, infilling): clue positions, never masked nor scored; the
    ``"elbo"`` loss is then per free (non-clue) token of each sequence, averaged over the
    batch.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    cfg = model.config
    x0 = check_tokens(x0, cfg.vocab_size, cfg.seq_len, allow_mask=False, name="x0")
    if x0.ndim != 2:
        raise ValueError(f"x0 must be shaped (B, L); got {tuple(x0.shape)}")
    b, length = x0.shape
    u0 = torch.rand((), generator=generator, device=x0.device)
    t = ((u0 + torch.arange(b, device=x0.device) / b) % 1.0) * (1 - t_min) + t_min
    if keep is not None:
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != x0.shape:
            raise ValueError(f"keep: must be a bool tensor shaped {tuple(x0.shape)}, got "
                             f"{shape_str(keep)}")
        keep = keep.to(x0.device)
    xt, masked = mask_tokens(x0, t, cfg.mask_id, generator, keep)
    n_free = None if keep is None else (~keep).sum(1).clamp_min(1)
    if shard is not None:  # this rank's items; normalized by the global batch below
        n_masked = masked.sum().clamp_min(1)
        x0, xt, masked, t = x0[shard], xt[shard], masked[shard], t[shard]
        n_free = None if n_free is None else n_free[shard]
    logits = model(xt)
    nll = nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), x0.reshape(-1),
                                      reduction="none").reshape(x0.shape[0], length)
    nll = nll * masked
    if shard is not None:
        if weighting == "elbo" and n_free is not None:
            return (nll.sum(1) / t / n_free).sum() / b
        if weighting == "elbo":
            return (nll.sum(1) / t).sum() / b / length
        return nll.sum() / n_masked
    if weighting == "elbo" and n_free is not None:
        return (nll.sum(1) / t / n_free).mean()
    if weighting == "elbo":
        return (nll.sum(1) / t).mean() / length
    return nll.sum() / masked.sum().clamp_min(1)
