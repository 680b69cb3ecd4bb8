"""Sudoku task: checker, penalty, solver, generator, clue clamping, bad input."""

import pytest
import torch

from samplegrad_bench.tasks import sudoku as S

# a well-known valid grid (the base pattern) and the "hardest" puzzle of A. Inkala (2012)
BASE = torch.tensor([(3 * (r % 3) + r // 3 + c) % 9 + 1 for r in range(9) for c in range(9)])
INKALA = torch.tensor([int(c) for c in
                       "800000000003600000070090200050007000000045700000100030001000068"
                       "008500010090000400"])


def onehot(grid: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(grid - 1, 9).float()


def test_valid_grid_has_no_violations_and_swapped_pair_has_some():
    assert int(S.violations(BASE)) == 0
    bad = BASE.clone()
    bad[0], bad[1] = BASE[1], BASE[0]  # swap two cells of a row: columns and maybe boxes break
    # columns 0 and 1 each get a repeated digit (-1 distinct each); same box -> box unchanged
    assert int(S.violations(bad)) == 2
    bad2 = BASE.clone()
    bad2[0], bad2[3] = BASE[3], BASE[0]  # across boxes: 2 columns + 2 boxes
    assert int(S.violations(bad2)) == 4
    assert S.violations(torch.stack([BASE, bad, bad2])).tolist() == [0, 2, 4]
    assert int(S.violations(torch.zeros(81, dtype=torch.long))) == 243


def test_penalty_zero_iff_valid_and_hand_case():
    assert float(S.penalty(onehot(BASE))) == 0.0
    bad = BASE.clone()
    bad[0], bad[1] = BASE[1], BASE[0]
    # column 0: digit a twice, digit b missing -> (2-1)^2 + (0-1)^2 = 2; same for column 1
    assert float(S.penalty(onehot(bad))) == 4.0
    bad2 = BASE.clone()
    bad2[0] = BASE[1]  # one cell changed: its row, column and box each get 2 (+1 and -1)
    assert float(S.penalty(onehot(bad2))) == 6.0
    # soft uniform assignment: every count is 1 -> 0 (penalty alone does not force one-hot)
    assert float(S.penalty(torch.full((81, 9), 1 / 9))) == pytest.approx(0.0, abs=1e-5)
    x = torch.zeros(2, 81, 9)  # all-zero: 243 units*digits of (0-1)^2
    assert S.penalty(x).tolist() == [243.0, 243.0]
    # random one-hot grids: penalty 0 exactly when violations 0
    grids = torch.randint(1, 10, (50, 81))
    grids[0] = BASE
    assert torch.equal(S.penalty(onehot(grids)) == 0, S.violations(grids) == 0)


def test_penalty_is_differentiable():
    x = torch.rand(3, 81, 9, requires_grad=True)
    S.penalty(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # gradient of Σ(c-1)^2 w.r.t. x[cell, d] = 2 Σ over its 3 units of (count - 1)
    counts = S._unit_counts(x.detach())
    unit_of = torch.tensor([[r, 9 + c, 18 + 3 * (r // 3) + c // 3]
                            for r in range(9) for c in range(9)])
    expected = 2 * (counts[:, unit_of, :] - 1).sum(-2)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_generator_unique_consistent_deterministic(difficulty):
    puzzles, solutions = S.generate_puzzles(4, seed=3, difficulty=difficulty)
    assert puzzles.shape == solutions.shape == (4, 81)
    assert ((puzzles > 0).sum(-1) == S.DIFFICULTY_CLUES[difficulty]).all()
    assert S.is_solved(solutions, puzzles).all()
    for p, s in zip(puzzles, solutions):
        assert S.count_solutions(p, limit=2) == 1
        assert torch.equal(S.solve(p), s)
    again, _ = S.generate_puzzles(4, seed=3, difficulty=difficulty)
    assert torch.equal(puzzles, again)
    other, _ = S.generate_puzzles(4, seed=4, difficulty=difficulty)
    assert not torch.equal(puzzles, other)


def test_solver_hard_puzzle_and_unsolvable():
    sol = S.solve(INKALA)
    assert sol is not None and bool(S.is_solved(sol, INKALA))
    assert S.count_solutions(INKALA) == 1
    assert S.count_solutions(torch.zeros(81, dtype=torch.long), limit=5) == 5
    # consistent clues but no solution: row 0 = 1..8 blank at col 8, and a 9 in column 8
    p = torch.zeros(81, dtype=torch.long)
    p[:8] = torch.arange(1, 9)
    p[9 * 4 + 8] = 9
    assert S.solve(p) is None and S.count_solutions(p) == 0


def test_random_solutions_valid_and_varied():
    grids = S.random_solutions(20, seed=1)
    assert grids.shape == (20, 81) and grids.dtype == torch.long
    assert (S.violations(grids) == 0).all()
    assert len({tuple(g.tolist()) for g in grids}) == 20
    assert torch.equal(grids, S.random_solutions(20, seed=1))


def test_clamping_keeps_clues_under_sampling():
    puzzles, _ = S.generate_puzzles(2, seed=0, difficulty="easy")
    logits = torch.randn(2, 81, 9, requires_grad=True)
    clamped = S.clue_mask_logits(puzzles, logits)
    draws = torch.distributions.Categorical(logits=clamped).sample((200,)) + 1  # (200, 2, 81)
    clue = puzzles > 0
    assert (draws[:, clue] == puzzles[clue]).all()
    assert len(torch.unique(draws[:, ~clue])) == 9  # blanks still free
    assert torch.equal(S.to_grid(clamped)[clue], puzzles[clue])
    clamped.masked_fill(torch.isinf(clamped), 0).sum().backward()
    assert (logits.grad[~clue] == 1).all()
    finite = S.clue_mask_logits(puzzles[0], logits[0].detach(), fill=-1e4)
    assert torch.isfinite(finite).all() and finite.min() == -1e4


def test_is_solved():
    puzzles, solutions = S.generate_puzzles(2, seed=0, difficulty="medium")
    assert S.is_solved(solutions, puzzles).tolist() == [True, True]
    other = S.random_solutions(1, seed=5)[0]
    assert not bool(S.is_solved(other, puzzles[0]))  # valid grid, wrong clues
    assert not bool(S.is_solved(puzzles[0], puzzles[0]))  # blanks are not a solution


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="puzzle"):
        S.solve(torch.zeros(80, dtype=torch.long))
    with pytest.raises(ValueError, match="puzzle"):
        S.solve(torch.full((81,), 10))
    with pytest.raises(ValueError, match="puzzle"):
        S.solve(torch.zeros(81))  # float dtype
    contradictory = torch.zeros(81, dtype=torch.long)
    contradictory[0] = contradictory[5] = 7
    with pytest.raises(ValueError, match="puzzle.*contradictory"):
        S.count_solutions(contradictory)
    with pytest.raises(ValueError, match="puzzles"):
        S.clue_mask_logits(contradictory, torch.zeros(81, 9))
    with pytest.raises(ValueError, match="logits"):
        S.clue_mask_logits(BASE, torch.zeros(81, 8))
    with pytest.raises(ValueError, match="grid"):
        S.violations(torch.full((81,), -1))
    with pytest.raises(ValueError, match="x"):
        S.penalty(torch.zeros(81, 10))
    with pytest.raises(ValueError, match="difficulty"):
        S.generate_puzzles(1, difficulty="extreme")
    with pytest.raises(ValueError, match="limit"):
        S.count_solutions(BASE, limit=0)
    with pytest.raises(ValueError, match="n"):
        S.random_solutions(-1)


def test_puzzle_set_cache(tmp_path):
    p1, s1 = S.puzzle_set(3, seed=2, difficulty="easy", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    p2, s2 = S.puzzle_set(3, seed=2, difficulty="easy", cache_dir=tmp_path)
    assert torch.equal(p1, p2) and torch.equal(s1, s2)
    p3, _ = S.generate_puzzles(3, seed=2, difficulty="easy")
    assert torch.equal(p1, p3)
