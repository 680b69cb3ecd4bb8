"""A small transformer denoiser over token sequences with an absorbing [MASK] state.

Tokens are ``0..vocab_size-1``; the mask token is ``vocab_size``. The network sees the
partially masked sequence and predicts, for every position, logits over the ``vocab_size``
real tokens (never the mask). No time conditioning: the masked fraction is visible in the
input (as in MDLM / RADD, where the optimal denoiser of the absorbing process does not
depend on t given the masked sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from samplegrad._config import check_int
from samplegrad._validation import validation_enabled


@dataclass(frozen=True)
class MDMConfig:
    """Architecture of :class:`Denoiser`."""

    vocab_size: int  # real tokens; the mask id is vocab_size
    seq_len: int
    width: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "width", "depth", "heads", "mlp_ratio"):
            check_int(getattr(self, name), name, 1)
        if self.width % self.heads:
            raise ValueError(f"width: must be divisible by heads ({self.heads}), got "
                             f"{self.width}")

    @property
    def mask_id(self) -> int:
        return self.vocab_size


def check_tokens(x: Tensor, vocab_size: int | None, seq_len: int | None = None, *,
                 allow_mask: bool = True, name: str = "x") -> Tensor:
    """Validate an integer token tensor ``(..., L)`` with ids in ``0..vocab_size`` (the last
    one is [MASK], allowed only if ``allow_mask``); returns it as int64. With
    ``vocab_size=None`` (not known yet) only negative ids are refused. The id range is
    scanned only when value checks are on (:func:`samplegrad.validation_enabled`)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype; got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must be shaped (..., L); got a scalar")
    if seq_len is not None and x.shape[-1] != seq_len:
        raise ValueError(f"{name} must be shaped (..., {seq_len}); got {tuple(x.shape)}")
    if vocab_size is None:
        if validation_enabled() and x.numel() and int(x.min()) < 0:
            raise ValueError(f"{name} has negative token ids (min {int(x.min())})")
        return x.long()
    top = vocab_size if allow_mask else vocab_size - 1
    if validation_enabled() and x.numel() and (int(x.min()) < 0 or int(x.max()) > top):
        what = f"0..{vocab_size - 1} or the mask id {vocab_size}" if allow_mask \
            else f"0..{vocab_size - 1}"
        raise ValueError(f"{name} has token ids outside {what} "
                         f"(min {int(x.min())}, max {int(x.max())})")
    return x.long()


class Denoiser(nn.Module):
    """Pre-norm transformer encoder: tokens ``(B, L)`` (or one-hot / soft tokens ``(B, L,
    vocab_size + 1)``, see :meth:`forward`) -> logits ``(B, L, vocab_size)``.

    Built on ``device`` (default: torch's default device), like torch's own layers.
    """

    def __init__(self, config: MDMConfig, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        if not isinstance(config, MDMConfig):
            raise TypeError(f"config: must be an MDMConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.tok = nn.Embedding(c.vocab_size + 1, c.width, device=device)
        self.pos = nn.Parameter(torch.randn(c.seq_len, c.width, device=device) * 0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, c.mlp_ratio * c.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True,
                                           device=device)
        self.blocks = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width, device=device)
        self.head = nn.Linear(c.width, c.vocab_size, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: integer tokens ``(B, L)``, or float one-hot / soft tokens ``(B, L, V + 1)``
        (a distribution over the ids ``0..V``, the last being [MASK]; the embedding is then
        applied as the matmul ``x @ tok.weight``, which equals the lookup on one-hot rows
        and lets gradients flow into ``x``: :mod:`samplegrad.discrete.finetune` feeds the
        sampler's relaxed draws back in this way)."""
        c = self.config
        if isinstance(x, Tensor) and x.is_floating_point():
            if x.ndim != 3 or x.shape[1:] != (c.seq_len, c.vocab_size + 1):
                raise ValueError(f"x must have an integer dtype (token ids (B, {c.seq_len}))"
                                 f" or be float one-hot / soft tokens (B, {c.seq_len}, "
                                 f"{c.vocab_size + 1}); got {x.dtype} {tuple(x.shape)}")
            h = x.to(self.tok.weight.dtype) @ self.tok.weight + self.pos
        else:
            x = check_tokens(x, c.vocab_size, c.seq_len)
            h = self.tok(x) + self.pos
        return self.head(self.norm(self.blocks(h)))
