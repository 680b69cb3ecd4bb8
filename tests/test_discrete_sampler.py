"""Carry-over unmasking sampler: unmasked and clamped tokens never change."""

import pytest
import torch
from test_discrete_model import TINY

from samplegrad.discrete import Denoiser, sample, unmask_step
from samplegrad_bench.tasks.mdm_objectives import sudoku_tokens


def test_unmask_step_carries_over():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (500, 6), generator=gen)  # 3 = mask
    logits = torch.randn(500, 6, 3, generator=gen)
    y = unmask_step(x, logits, 0.6, 0.3, 3, gen)
    keep = x != 3
    assert torch.equal(y[keep], x[keep])
    newly = (x == 3) & (y != 3)
    frac = newly.sum().item() / (x == 3).sum().item()
    n = (x == 3).sum().item()
    assert abs(frac - 0.5) < 5 * (0.25 / n) ** 0.5  # reveal prob (t - s) / t = 0.5
    assert not (unmask_step(x, logits, 0.3, 0.0, 3, gen) == 3).any()  # last step: all


def test_sampler_trajectory_never_changes_unmasked_and_keeps_clues():
    torch.manual_seed(0)
    model = Denoiser(TINY)
    given = torch.tensor([3, 2, 3, 0, 3, 3])
    states = []

    def recorder(p_logits, x, t, s):
        states.append(x.clone())
        return p_logits

    x = sample(model, 5, batch_size=64, given=given, guide=recorder,
               generator=torch.Generator().manual_seed(1))
    states.append(x)
    assert len(states) >= 3
    for a, b in zip(states[:-1], states[1:]):
        keep = a != 3
        assert torch.equal(b[keep], a[keep])
    assert (x[:, 1] == 2).all() and (x[:, 3] == 0).all()
    assert not (x == 3).any()


def test_sampler_bad_input():
    model = Denoiser(TINY)
    with pytest.raises(ValueError, match=r"given must be shaped \(\.\.\., 6\)"):
        sample(model, 4, given=torch.full((2, 5), 3))
    with pytest.raises(ValueError, match="given has token ids"):
        sample(model, 4, given=torch.full((2, 6), 7))
    with pytest.raises(ValueError, match="batch_size"):
        sample(model, 4, given=torch.full((2, 6), 3), batch_size=3)
    with pytest.raises(ValueError, match="n_steps"):
        sample(model, 0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        sample(model, 4)
    # a Sudoku clue grid of the wrong shape is caught before it reaches the model
    with pytest.raises(ValueError, match="grid must be shaped"):
        sudoku_tokens(torch.zeros(2, 80, dtype=torch.long))
