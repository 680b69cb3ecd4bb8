"""Masked diffusion: model, loss and input checks."""

import pytest
import torch

from samplegrad.discrete import (
    Denoiser,
    MDMConfig,
    TrainConfig,
    mask_tokens,
    masked_diffusion_loss,
    train_init,
    train_step,
)
from samplegrad_bench.tasks.mdm_objectives import digit_tokens, sudoku_grid, sudoku_tokens

TINY = MDMConfig(vocab_size=3, seq_len=6, width=16, depth=1, heads=2, mlp_ratio=2)


def test_logits_shape_and_no_mask_class():
    model = Denoiser(TINY)
    x = torch.tensor([[0, 1, 2, 3, 3, 0]])
    assert model(x).shape == (1, 6, 3)  # logits over the real tokens only


def test_mask_tokens_rate():
    x0 = torch.zeros(400, 50, dtype=torch.long)
    t = torch.full((400,), 0.3)
    xt, masked = mask_tokens(x0, t, mask_id=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xt == 3, masked)
    n = masked.numel()
    assert abs(masked.float().mean().item() - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5


@pytest.mark.parametrize("weighting", ["elbo", "unweighted"])
def test_loss_decreases(weighting):
    cfg = TrainConfig(steps=60, batch_size=32, lr=1e-2, warmup=1, weighting=weighting)
    state = train_init(TINY, cfg, seed=0)
    data = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])

    def held_out() -> float:
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(float(masked_diffusion_loss(state.model, data.repeat(64, 1),
                                                   weighting=weighting, generator=gen))
                       for _ in range(4)) / 4

    before = held_out()
    for _ in range(cfg.steps):
        train_step(state, data, cfg)
    after = held_out()
    assert after < 0.6 * before, (before, after)


def test_bad_tokens_raise():
    model = Denoiser(TINY)
    with pytest.raises(ValueError, match="x has token ids"):
        model(torch.tensor([[0, 1, 2, 4, 0, 0]]))  # 4 > mask id 3
    with pytest.raises(ValueError, match="x has token ids"):
        model(torch.tensor([[0, -1, 2, 3, 0, 0]]))
    with pytest.raises(ValueError, match=r"x must be shaped \(\.\.\., 6\)"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer dtype"):
        model(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="x0 has token ids"):  # clean data may not hold [MASK]
        masked_diffusion_loss(model, torch.full((2, 6), 3))
    with pytest.raises(ValueError, match="weighting"):
        masked_diffusion_loss(model, torch.zeros(2, 6, dtype=torch.long), weighting="x")


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="width"):
        MDMConfig(vocab_size=3, seq_len=6, width=10, heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        MDMConfig(vocab_size=0, seq_len=6)


def test_task_adapters():
    grid = torch.tensor([0, 5, 9] + [1] * 78)
    tok = sudoku_tokens(grid)
    assert tok[:3].tolist() == [9, 4, 8]
    assert torch.equal(sudoku_grid(tok), grid)
    with pytest.raises(ValueError, match=r"grid must be shaped \(\.\.\., 81\)"):
        sudoku_tokens(torch.zeros(9, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="grid has values outside"):
        sudoku_tokens(torch.full((81,), 10))
    with pytest.raises(ValueError, match="binarized"):
        digit_tokens(torch.full((2, 64), 0.5))
