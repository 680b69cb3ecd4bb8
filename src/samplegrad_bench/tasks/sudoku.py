"""Sudoku as a benchmark problem: checker, differentiable penalty, solver and generator.

Grids are int64 tensors shaped ``(..., 81)``, row-major (cell ``9 * row + col``), digits
1..9 and 0 for a blank. Digit assignments for gradient-based solving are shaped
``(..., 81, 9)`` (one-hot or soft; class ``d - 1`` is digit ``d``).

- :func:`violations`: Σ over the 27 units (rows, columns, boxes) of (9 − number of distinct
  nonzero digits in the unit); 0 iff the grid is a valid full solution.
- :func:`penalty`: Σ over the 27 units and the 9 digits of (count − 1)², counts the sums of
  ``x`` over the unit's 9 cells; for one-hot ``x``, 0 iff the grid is valid.
- :func:`soft_violations`: the expected :func:`violations` of independent cells with digit
  probabilities ``x`` ``(..., 81, 9)``; equal to :func:`violations` on one-hot ``x``,
  differentiable (a relaxation for pathwise gradients).
- :func:`solve`, :func:`count_solutions`: bitmask backtracking (most-constrained cell
  first), pure Python.
- :func:`random_solutions`, :func:`generate_puzzles`, :func:`puzzle_set`: deterministic for
  a seed; generated puzzles have exactly one solution.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from samplegrad.checkpoint import load_cache, save_checkpoint
from samplegrad_bench import paths

# difficulty -> number of clues kept (cells removed greedily while the solution stays unique)
DIFFICULTY_CLUES: dict[str, int] = {"easy": 40, "medium": 32, "hard": 26}


def _units() -> torch.Tensor:
    rows = [[9 * r + c for c in range(9)] for r in range(9)]
    cols = [[9 * r + c for r in range(9)] for c in range(9)]
    boxes = [[9 * (3 * br + i) + 3 * bc + j for i in range(3) for j in range(3)]
             for br in range(3) for bc in range(3)]
    return torch.tensor(rows + cols + boxes, dtype=torch.long)


UNITS: torch.Tensor = _units()  # (27, 9): cell indices of rows 0-8, columns 0-8, boxes 0-8
_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [3 * (i // 27) + (i % 9) // 3 for i in range(81)]
_ALL = 0x3FF & ~1  # bits 1..9


# ---------------------------------------------------------------- input checks


def _check_grid(grid: torch.Tensor, name: str, consistent: bool = False) -> torch.Tensor:
    """Validate an int grid ``(..., 81)`` with digits 0..9 (optionally: no repeated clue)."""
    if not isinstance(grid, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(grid).__name__}")
    if grid.dtype.is_floating_point or grid.dtype.is_complex or grid.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype; got {grid.dtype}")
    if grid.ndim < 1 or grid.shape[-1] != 81:
        raise ValueError(f"{name} must be shaped (..., 81); got {tuple(grid.shape)}")
    if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) > 9):
        raise ValueError(f"{name} has digits outside 0..9")
    grid = grid.long()
    if consistent and grid.numel():
        counts = _unit_counts(torch.nn.functional.one_hot(grid, 10)[..., 1:].float())
        if bool((counts > 1).any()):
            raise ValueError(f"{name} has contradictory clues (a digit repeated in a unit)")
    return grid


def _check_single(puzzle: torch.Tensor, name: str = "puzzle") -> list[int]:
    puzzle = _check_grid(puzzle, name, consistent=True)
    if puzzle.shape != (81,):
        raise ValueError(f"{name} must be shaped (81,); got {tuple(puzzle.shape)}")
    return puzzle.tolist()


# ---------------------------------------------------------------- checker and penalty


def _unit_counts(x: torch.Tensor) -> torch.Tensor:
    """Per-unit digit counts: ``(..., 81, 9)`` -> ``(..., 27, 9)`` (rows, cols, boxes)."""
    g = x.reshape(*x.shape[:-2], 9, 9, 9)  # (..., row, col, digit)
    rows = g.sum(-2)
    cols = g.sum(-3)
    boxes = g.reshape(*x.shape[:-2], 3, 3, 3, 3, 9).sum((-4, -2)).reshape(*x.shape[:-2], 9, 9)
    return torch.cat([rows, cols, boxes], dim=-2)


def violations(grid: torch.Tensor) -> torch.Tensor:
    """Σ over the 27 units of (9 − distinct nonzero digits): ``(..., 81)`` -> ``(...)`` int64.

    0 iff every row, column and box holds each digit 1..9 once (blanks count as missing).
    """
    grid = _check_grid(grid, "grid")
    present = _unit_counts(torch.nn.functional.one_hot(grid, 10)[..., 1:].float()) > 0
    return 243 - present.sum((-1, -2))


def penalty(x: torch.Tensor) -> torch.Tensor:
    """Σ over units and digits of (count − 1)²: ``(..., 81, 9)`` -> ``(...)``, differentiable.

    For one-hot ``x`` it is 0 iff the grid is a valid solution (and ≥ 2 otherwise).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-2:] != (81, 9):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be shaped (..., 81, 9); got {shape}")
    return (_unit_counts(x) - 1).square().sum((-1, -2))


def soft_violations(x: torch.Tensor) -> torch.Tensor:
    """Σ over units of (9 − Σ_d P(digit d present)), ``P = 1 − Π_cells (1 − x[cell, d])``:
    ``(..., 81, 9)`` -> ``(...)``, differentiable.

    The expected :func:`violations` when the cells are independent with digit probabilities
    ``x`` (rows summing to 1); on one-hot ``x`` it equals :func:`violations` of its grid.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-2:] != (81, 9):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be shaped (..., 81, 9); got {shape}")
    units = x[..., UNITS.to(x.device), :]  # (..., 27, 9 cells, 9 digits)
    present = 1 - (1 - units).prod(-2)
    return 243 - present.sum((-1, -2))


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """Digit grid of an assignment: ``(..., 81, 9)`` one-hot/soft/logits -> ``(..., 81)``."""
    return x.argmax(-1) + 1


def is_solved(grid: torch.Tensor, puzzle: torch.Tensor) -> torch.Tensor:
    """Whether ``grid`` is a valid full solution agreeing with every clue of ``puzzle``.

    ``grid`` ``(..., 81)``, ``puzzle`` broadcastable to it -> bool ``(...)``.
    """
    grid = _check_grid(grid, "grid")
    puzzle = _check_grid(puzzle, "puzzle", consistent=True)
    agrees = ((puzzle == 0) | (grid == puzzle)).all(-1)
    return (violations(grid) == 0) & agrees


# ---------------------------------------------------------------- clue clamping


def clue_mask(puzzles: torch.Tensor) -> torch.Tensor:
    """Allowed digits: ``(..., 81)`` -> bool ``(..., 81, 9)``; a clue cell allows its clue only."""
    puzzles = _check_grid(puzzles, "puzzles", consistent=True)
    clue = torch.nn.functional.one_hot(puzzles, 10)[..., 1:].bool()
    return clue | (puzzles == 0).unsqueeze(-1)


def clue_mask_logits(puzzles: torch.Tensor, logits: torch.Tensor,
                     fill: float = float("-inf")) -> torch.Tensor:
    """Clamp clues: every digit but the clue gets ``fill`` (−inf: never sampled) at clue cells.

    ``puzzles`` ``(..., 81)``, ``logits`` ``(..., 81, 9)`` (broadcastable) -> ``(..., 81, 9)``.
    Differentiable w.r.t. ``logits`` (blank cells and the clue digit pass through).
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2 or logits.shape[-2:] != (81, 9):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be shaped (..., 81, 9); got {shape}")
    mask = clue_mask(puzzles).to(logits.device)
    return logits.masked_fill(~mask, fill)


# ---------------------------------------------------------------- solver


def _search(cells: list[int], limit: int, rng: random.Random | None) -> list[list[int]]:
    """Up to ``limit`` solutions of a consistent puzzle (list of 81 ints), by backtracking."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    empty = []
    for i, d in enumerate(cells):
        if d:
            b = 1 << d
            rows[_ROW[i]] |= b
            cols[_COL[i]] |= b
            boxes[_BOX[i]] |= b
        else:
            empty.append(i)
    grid = list(cells)
    found: list[list[int]] = []

    def rec(todo: list[int]) -> bool:  # True: stop (limit reached)
        if not todo:
            found.append(list(grid))
            return len(found) >= limit
        best, best_mask, best_n = -1, 0, 10
        for i in todo:  # most-constrained cell first
            m = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            n = m.bit_count()
            if n < best_n:
                best, best_mask, best_n = i, m, n
                if n <= 1:
                    break
        if best_n == 0:
            return False
        rest = [j for j in todo if j != best]
        digits = [d for d in range(1, 10) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        r, c, bx = _ROW[best], _COL[best], _BOX[best]
        for d in digits:
            b = 1 << d
            rows[r] |= b
            cols[c] |= b
            boxes[bx] |= b
            grid[best] = d
            stop = rec(rest)
            rows[r] &= ~b
            cols[c] &= ~b
            boxes[bx] &= ~b
            if stop:
                return True
        grid[best] = 0
        return False

    rec(empty)
    return found


def solve(puzzle: torch.Tensor) -> torch.Tensor | None:
    """A solution ``(81,)`` of ``puzzle`` ``(81,)``, or None if it has none."""
    found = _search(_check_single(puzzle), 1, None)
    return torch.tensor(found[0], dtype=torch.long) if found else None


def count_solutions(puzzle: torch.Tensor, limit: int = 2) -> int:
    """Number of solutions of ``puzzle`` ``(81,)``, counting stops at ``limit``."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int; got {limit!r}")
    return len(_search(_check_single(puzzle), limit, None))


# ---------------------------------------------------------------- generators


def _random_full(rng: random.Random) -> list[int]:
    return _search([0] * 81, 1, rng)[0]


def random_solutions(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` valid full grids ``(n, 81)``: backtracking fill with shuffled candidates."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int; got {n!r}")
    rng = random.Random(f"sudoku-solutions:{seed}")
    return torch.tensor([_random_full(rng) for _ in range(n)], dtype=torch.long).reshape(n, 81)


def _carve(solution: list[int], n_clues: int, rng: random.Random) -> list[int] | None:
    """Blank cells in random order while the solution stays unique; None if stuck above
    ``n_clues`` clues."""
    puzzle = list(solution)
    clues = 81
    order = list(range(81))
    rng.shuffle(order)
    for i in order:
        if clues <= n_clues:
            break
        d, puzzle[i] = puzzle[i], 0
        if len(_search(puzzle, 2, None)) == 1:
            clues -= 1
        else:
            puzzle[i] = d
    return puzzle if clues == n_clues else None


def _check_difficulty(difficulty: str) -> int:
    if difficulty not in DIFFICULTY_CLUES:
        raise ValueError(f"difficulty must be one of {list(DIFFICULTY_CLUES)}; "
                         f"got {difficulty!r}")
    return DIFFICULTY_CLUES[difficulty]


def generate_puzzles(n: int, seed: int = 0,
                     difficulty: str = "medium") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` puzzles with a unique solution and exactly ``DIFFICULTY_CLUES[difficulty]`` clues
    (easy 40, medium 32, hard 26) -> ``(puzzles (n, 81), solutions (n, 81))``.

    Deterministic for ``(seed, difficulty)``: random full grid, then cells blanked in a
    random order whenever the solution stays unique (a new grid if it gets stuck).
    """
    n_clues = _check_difficulty(difficulty)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int; got {n!r}")
    rng = random.Random(f"sudoku-puzzles:{seed}:{difficulty}")
    puzzles, solutions = [], []
    while len(puzzles) < n:
        sol = _random_full(rng)
        puz = _carve(sol, n_clues, rng)
        if puz is not None:
            puzzles.append(puz)
            solutions.append(sol)
    as_t = lambda rows: torch.tensor(rows, dtype=torch.long).reshape(n, 81)  # noqa: E731
    return as_t(puzzles), as_t(solutions)


def puzzle_set(n: int = 100, seed: int = 0, difficulty: str = "medium",
               cache_dir: str | Path | None = None,
               cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`generate_puzzles`, cached as a ``.pt`` file under ``cache_dir`` (default: the
    user cache's ``sudoku/``, see :func:`samplegrad_bench.paths.cache_dir`; ``cache=False``:
    not cached)."""
    _check_difficulty(difficulty)
    path = None
    if cache:
        folder = paths.cache_dir("sudoku") if cache_dir is None else Path(cache_dir)
        path = folder / f"puzzles_{difficulty}_n{n}_seed{seed}.pt"
        data = load_cache(path, check=lambda d: (d["puzzles"], d["solutions"]))
        if data is not None:  # missing or damaged (warned): generated again
            return data["puzzles"], data["solutions"]
    puzzles, solutions = generate_puzzles(n, seed, difficulty)
    if path is not None:
        save_checkpoint(path, {"puzzles": puzzles, "solutions": solutions})
    return puzzles, solutions
