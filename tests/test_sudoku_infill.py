"""Sudoku infilling: clue positions never masked nor scored (loss, training step, the clue
draws of `train-mdm --task sudoku-infill`), the held-out puzzles disjoint from every grid
trained or finetuned on, and the reward (minus the violation count, exact on one-hot grids,
its relaxation on soft ones) against hand-counted grids."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplegrad.discrete import (
    Denoiser,
    MDMConfig,
    MDMTrainConfig,
    mask_tokens,
    masked_diffusion_loss,
    train_init,
    train_step,
)
from samplegrad_bench.tasks.mdm_objectives import (
    FINETUNE_PUZZLE_SEED,
    HELDOUT_PUZZLE_SEED,
    sudoku_infill_clues,
    sudoku_reward,
    sudoku_tokens,
)
from samplegrad_bench.tasks.sudoku import (
    generate_puzzles,
    random_solutions,
    soft_violations,
    violations,
)

SOLUTION = torch.tensor([
    5, 3, 4, 6, 7, 8, 9, 1, 2,
    6, 7, 2, 1, 9, 5, 3, 4, 8,
    1, 9, 8, 3, 4, 2, 5, 6, 7,
    8, 5, 9, 7, 6, 1, 4, 2, 3,
    4, 2, 6, 8, 5, 3, 7, 9, 1,
    7, 1, 3, 9, 2, 4, 8, 5, 6,
    9, 6, 1, 5, 3, 7, 2, 8, 4,
    2, 8, 7, 4, 1, 9, 6, 3, 5,
    3, 4, 5, 2, 8, 6, 1, 7, 9])


def one_hot(grid):
    return torch.nn.functional.one_hot(grid - 1, 9).float()


def test_reward_is_minus_the_hand_counted_violations():
    assert float(sudoku_reward(one_hot(SOLUTION)[None])[0]) == 0.0
    g = SOLUTION.clone()
    g[0] = 3  # (0,0) 5 -> 3, the digit of (0,1): row 0, column 0 and box 0 each lack a 5
    g2 = SOLUTION.clone()
    g2[0], g2[1] = 3, 5  # swap (0,0) and (0,1): rows and box fine; columns 0 and 1 broken
    g3 = SOLUTION.clone()
    g3[40], g3[44] = 1, 5  # swap (4,4) and (4,8): row 4 fine; columns 4 and 8 and boxes 4
    # and 5 (the two cells lie in different boxes) each get one repeat
    hand = [3, 2, 4]
    grids = torch.stack([g, g2, g3])
    assert violations(grids).tolist() == hand
    assert sudoku_reward(one_hot(grids)).tolist() == [-h for h in hand]


def test_soft_violations_is_the_expected_count_of_independent_cells():
    uniform = torch.full((81, 9), 1 / 9)
    want = 27 * 9 * (1 - 1 / 9) ** 9  # per unit and digit: P(absent) = (8/9)^9
    assert math.isclose(float(soft_violations(uniform)), want, rel_tol=1e-5)
    x = torch.softmax(torch.randn(81, 9, generator=torch.Generator().manual_seed(0)), -1)
    gen = torch.Generator().manual_seed(1)
    draws = torch.multinomial(x, 4000, replacement=True, generator=gen).T + 1  # (4000, 81)
    v = violations(draws).double()
    se = float(v.std()) / math.sqrt(len(v))
    assert abs(float(v.mean()) - float(soft_violations(x))) < 5 * se
    x.requires_grad_(True)
    soft_violations(x).backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), blanks=st.integers(0, 81))
def test_soft_violations_equals_violations_on_one_hot_grids(seed, blanks):
    gen = torch.Generator().manual_seed(seed)
    grid = torch.randint(1, 10, (81,), generator=gen)
    x = one_hot(grid)
    blank = torch.randperm(81, generator=gen)[:blanks]
    grid[blank], x[blank] = 0, 0.0  # a blank: no digit (counts as missing)
    assert float(soft_violations(x)) == float(violations(grid))


def test_clues_are_never_masked_nor_scored():
    x0 = torch.randint(0, 9, (64, 81), generator=torch.Generator().manual_seed(0))
    keep = sudoku_infill_clues(x0, torch.Generator().manual_seed(1))
    frac = keep.float().mean(1)
    assert 0.0 < float(frac.mean()) < 0.7 and float(frac.max()) <= 0.85
    xt, masked = mask_tokens(x0, torch.ones(64), 9, torch.Generator().manual_seed(2), keep)
    assert torch.equal(xt[keep], x0[keep]) and not bool(masked[keep].any())
    assert bool((xt[~keep] == 9).all())  # t = 1: every free cell masked

    seen = []

    class Recorder(Denoiser):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    torch.manual_seed(0)
    model = Recorder(MDMConfig(9, 81, width=16, depth=1, heads=2, mlp_ratio=2))
    for _ in range(3):
        masked_diffusion_loss(model, x0, keep=keep, generator=torch.Generator().manual_seed(3))
    for x in seen:
        assert torch.equal(x[keep], x0[keep])
    # nothing kept: the same loss as without keep (per free token = per token)
    a = masked_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(4))
    b = masked_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(4),
                              keep=torch.zeros_like(keep))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="keep"):
        masked_diffusion_loss(model, x0, keep=keep.long())


def test_train_step_draws_its_clues_from_the_state_generator():
    data = sudoku_tokens(random_solutions(16, 0))
    cfg = MDMTrainConfig(steps=4, batch_size=8, warmup=1)
    mcfg = MDMConfig(9, 81, width=16, depth=1, heads=2, mlp_ratio=2)
    seen = []

    def clues(batch, gen):
        keep = sudoku_infill_clues(batch, gen)
        seen.append(keep)
        return keep

    a, b = train_init(mcfg, cfg, 0), train_init(mcfg, cfg, 0)
    for _ in range(2):
        _, ia = train_step(a, data, cfg, clues=clues)
        _, ib = train_step(b, data, cfg, clues=sudoku_infill_clues)
        assert ia["loss"] == ib["loss"]  # deterministic given the generator
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])
    with pytest.raises(ValueError, match="clues"):
        train_step(a, data, cfg, clues=lambda batch, gen: batch.long())


def test_heldout_puzzles_are_disjoint_from_training_and_finetuning_grids():
    from samplegrad_bench.runners.train_mdm import task_spec

    spec = task_spec("sudoku-infill")
    assert spec.n_data >= 1000
    # the training grids are a prefix-stable stream: the first 300 of the 6000 are these
    train = random_solutions(300, 0)
    assert torch.equal(random_solutions(50, 0), train[:50])
    held, held_sol = generate_puzzles(12, HELDOUT_PUZZLE_SEED, "easy")
    pool, pool_sol = generate_puzzles(12, FINETUNE_PUZZLE_SEED, "easy")
    rows = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    assert not rows(held_sol) & rows(train)
    assert not rows(held_sol) & rows(pool_sol)
    assert not rows(held) & rows(pool)
    assert HELDOUT_PUZZLE_SEED != FINETUNE_PUZZLE_SEED
