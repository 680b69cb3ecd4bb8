"""Masked diffusion: model, loss and input checks."""

import pytest
import torch

from samplegrad.discrete import (
    Denoiser,
    MDMConfig,
    MDMTrainConfig,
    MDMTrainState,
    load_model,
    load_train_state,
    mask_tokens,
    masked_diffusion_loss,
    save_train_state,
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
    cfg = MDMTrainConfig(steps=60, batch_size=32, lr=1e-2, warmup=1, weighting=weighting)
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
        state, info = train_step(state, data, cfg)
    after = held_out()
    assert set(info) == {"loss", "lr"} and info["loss"] == state.losses[-1]
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
    with pytest.raises(ValueError, match="weighting"):
        MDMTrainConfig(weighting="x")
    with pytest.raises(ValueError, match="optimizer"):
        MDMTrainConfig(optimizer="Adamm")
    with pytest.raises(ValueError, match="warmup"):
        MDMTrainConfig(warmup=-1)


def test_train_state_round_trip_resumes_exactly(tmp_path):
    cfg = MDMTrainConfig(steps=6, batch_size=8, lr=1e-2, warmup=2)
    data = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0], [1, 0, 2, 1, 0, 2]])
    straight = train_init(TINY, cfg, seed=3)
    for _ in range(cfg.steps):
        straight, _ = train_step(straight, data, cfg)
    state = train_init(TINY, cfg, seed=3)
    for _ in range(2):
        state, info = train_step(state, data, cfg)
    assert info["lr"] == pytest.approx(1e-2)  # end of the warm-up
    path = save_train_state(tmp_path / "mdm.pt", state, cfg, {"note": 1})
    resumed = load_train_state(path)
    assert isinstance(resumed, MDMTrainState) and resumed.step == 2
    while resumed.step < cfg.steps:
        resumed, _ = train_step(resumed, data, cfg)
    assert resumed.losses == straight.losses
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(a, b)
    model = load_model(path, map_location="cpu")
    assert not model.training and isinstance(model, Denoiser)
    with pytest.raises(FileNotFoundError, match="no masked-diffusion checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_optimizer_factory_is_used():
    cfg = MDMTrainConfig(steps=2, batch_size=4)
    state = train_init(TINY, cfg, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert isinstance(state.optimizer, torch.optim.SGD)
    state, info = train_step(state, torch.zeros(3, 6, dtype=torch.long), cfg)
    assert state.optimizer.param_groups[0]["lr"] == info["lr"]


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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_and_sampling_on_the_gpu(tmp_path):
    from samplegrad.discrete import sample

    cfg = MDMTrainConfig(steps=2, batch_size=4, warmup=1)
    state = train_init(TINY, cfg, seed=0, device="cuda")
    state, info = train_step(state, torch.zeros(3, 6, dtype=torch.long), cfg)  # CPU data
    path = save_train_state(tmp_path / "g.pt", state, cfg)
    assert load_train_state(path, map_location="cuda").step == 1
    x = sample(state.model, 3, batch_size=2,
               generator=torch.Generator(device="cuda").manual_seed(0))
    assert x.is_cuda and x.shape == (2, 6)
