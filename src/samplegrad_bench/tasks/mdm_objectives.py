"""The two token tasks: Sudoku grids (81 tokens, vocabulary 9) and binarized 8x8 digits
(64 tokens, vocabulary 2), with their guidance objectives (per-sequence losses to minimize),
and the Sudoku infilling data (random clue subsets; held-out puzzles from seeds no training
set uses) and reward (minus the violation count) of `train-mdm --task sudoku-infill` and
`bench mdm-finetune --task sudoku`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from samplegrad.discrete.guidance import Objective
from samplegrad_bench.tasks.rewards import digit_log_prob
from samplegrad_bench.tasks.sudoku import penalty, soft_violations

SUDOKU_VOCAB, SUDOKU_LEN = 9, 81
DIGITS_VOCAB, DIGITS_LEN = 2, 64


def _check_int(x: Tensor, name: str, length: int, top: int) -> Tensor:
    if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor")
    if x.ndim < 1 or x.shape[-1] != length:
        raise ValueError(f"{name} must be shaped (..., {length}); got {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > top):
        raise ValueError(f"{name} has values outside 0..{top}")
    return x.long()


def sudoku_tokens(grid: Tensor) -> Tensor:
    """Digit grid ``(..., 81)`` (1..9, 0 blank) -> tokens (digit - 1; blank -> mask id 9)."""
    grid = _check_int(grid, "grid", SUDOKU_LEN, 9)
    return torch.where(grid == 0, torch.full_like(grid, SUDOKU_VOCAB), grid - 1)


def sudoku_grid(tokens: Tensor) -> Tensor:
    """Inverse of :func:`sudoku_tokens`: tokens ``(..., 81)`` -> digits (mask -> 0)."""
    tokens = _check_int(tokens, "tokens", SUDOKU_LEN, SUDOKU_VOCAB)
    return torch.where(tokens == SUDOKU_VOCAB, torch.zeros_like(tokens), tokens + 1)


def digit_tokens(images: Tensor) -> Tensor:
    """Binarized images ``(..., 64)`` with values in {0, 1} -> tokens (int64)."""
    if not isinstance(images, Tensor) or images.ndim < 1 or images.shape[-1] != DIGITS_LEN:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be shaped (..., {DIGITS_LEN}); got {shape}")
    if not bool(((images == 0) | (images == 1)).all()):
        raise ValueError("images must be binarized (values 0 or 1)")
    return images.long()


def sudoku_objective(y: Tensor) -> Tensor:
    """Constraint penalty of digit assignments ``(S, B, 81, 9)`` -> ``(S, B)``."""
    return penalty(y)


def digit_objective(classifier: nn.Module, digit: int, scale: float = 1.0) -> Objective:
    """``-scale * log p(digit | image)``, the image being the "on" channel of
    ``(S, B, 64, 2)`` one-hot/soft pixels -> ``(S, B)``."""
    def objective(y: Tensor) -> Tensor:
        s, b = y.shape[:2]
        return -scale * digit_log_prob(classifier, y[..., 1].reshape(s * b, DIGITS_LEN),
                                       digit).reshape(s, b)

    return objective


# ---------------------------------------------------------------- Sudoku infilling
INFILL_CLUES: tuple[float, float] = (0.0, 0.7)  # clue fraction of a training grid ~ U(lo, hi)
# puzzle seeds (generate_puzzles(n, seed, "easy")); the training grids come from
# random_solutions(n, train_seed), another random stream
FINETUNE_PUZZLE_SEED = 3001  # puzzles whose clues the finetuning paths start from
HELDOUT_PUZZLE_SEED = 4001  # puzzles only ever evaluated on (never trained or finetuned on)


def sudoku_infill_clues(batch: Tensor, generator: torch.Generator,
                        fraction: tuple[float, float] = INFILL_CLUES) -> Tensor:
    """Clue positions of an infilling batch ``(B, 81)`` -> bool ``(B, 81)``: every grid gets
    a clue fraction ``c ~ U(fraction)`` and each cell is a clue w.p. ``c`` (drawn from
    ``generator``, on its device; returned on ``batch``'s)."""
    lo, hi = fraction
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"fraction: need 0 <= lo <= hi <= 1; got {fraction!r}")
    b, length = batch.shape
    dev = generator.device
    c = lo + (hi - lo) * torch.rand((b, 1), generator=generator, device=dev)
    return (torch.rand((b, length), generator=generator, device=dev) < c).to(batch.device)


def sudoku_reward(x: Tensor) -> Tensor:
    """Minus the violation count of one-hot / soft Sudoku tokens ``(N, 81, 9)`` -> ``(N,)``
    (:func:`~samplegrad_bench.tasks.sudoku.soft_violations`: exact on one-hot tokens,
    differentiable on soft ones)."""
    return -soft_violations(x)
