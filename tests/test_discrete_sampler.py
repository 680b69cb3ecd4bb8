"""Carry-over unmasking sampler: unmasked and clamped tokens never change."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


# ----------------------------------------------------------------------------- any model
def lookup_model(vocab: int, seed: int = 0):
    """A plain function model: tokens (B, L) -> logits (B, L, vocab) from a fixed table (the
    mask token's own row included)."""
    table = torch.randn(vocab + 1, vocab, generator=torch.Generator().manual_seed(seed))

    def model(x):
        return table[x.clamp_max(vocab)]

    return model


def test_any_callable_with_its_own_mask_id_inside_the_vocabulary():
    model = lookup_model(5)  # V = 5; the model's [MASK] is token 2 (it must never be drawn)
    x = sample(model, 4, batch_size=300, seq_len=7, mask_id=2,
               generator=torch.Generator().manual_seed(0))
    assert x.shape == (300, 7) and not (x == 2).any()
    assert set(x.unique().tolist()) == {0, 1, 3, 4}
    given = torch.tensor([4, 2, 2, 0, 2, 2, 1])
    y = sample(model, 3, given=given, batch_size=5, mask_id=2)
    assert (y[:, 0] == 4).all() and (y[:, 3] == 0).all() and not (y == 2).any()


def test_unmasking_schedule_sets_the_reveal_rate():
    model = lookup_model(3)
    seen = []

    def recorder(p_logits, x, t, s):
        seen.append((x == 3).float().mean().item())
        return p_logits

    n, length = 400, 10
    sample(model, 4, batch_size=n, seq_len=length, mask_id=3, guide=recorder,
           schedule=lambda t: t ** 2, generator=torch.Generator().manual_seed(1))
    # masked fraction after step k is m(1 - k/4) = (1 - k/4)^2: 1, 0.5625, 0.25, 0.0625
    for k, m in enumerate([1.0, 0.5625, 0.25, 0.0625]):
        assert abs(seen[k] - m) < 5 * math.sqrt(max(m * (1 - m), 1e-12) / (n * length)) + 1e-9


def test_bad_sampler_arguments_name_themselves():
    model = Denoiser(TINY)
    fn = lookup_model(3)
    cases = [
        (lambda: sample(model, float("nan"), batch_size=2), ValueError, "^n_steps:"),
        (lambda: sample(model, 2, batch_size=2, temperature=float("nan")), ValueError,
         "^temperature:"),
        (lambda: sample(model, 2, batch_size=2, temperature=0.0), ValueError, "^temperature:"),
        (lambda: sample(fn, 2, batch_size=2, seq_len=4), ValueError, "^mask_id:"),
        (lambda: sample(fn, 2, batch_size=2, mask_id=3), ValueError, "^seq_len:"),
        (lambda: sample(fn, 2, batch_size=2, seq_len=4, mask_id=-1), ValueError, "^mask_id:"),
        (lambda: sample(model, 2, batch_size=2, schedule=lambda t: 2 * t), ValueError,
         "^schedule:"),
        (lambda: sample(model, 2, batch_size=2, schedule=lambda t: 1 - t), ValueError,
         "^schedule:"),
        (lambda: sample(model, 2, batch_size=2, schedule=0.5), TypeError, "^schedule:"),
        (lambda: sample(model, 2, batch_size=2, generator=0), TypeError, "^generator:"),
        (lambda: sample(model, 2, batch_size=2, guide=1), TypeError, "^guide:"),
        (lambda: sample(model, 2, batch_size=2, guide=lambda p, x, t, s: p[..., :2]),
         ValueError, "^guide: must return logits shaped"),
        (lambda: sample(model, 2, batch_size=2, guide=lambda p, x, t, s: p * float("nan")),
         ValueError, "^guide: returned NaN"),
        (lambda: sample(lambda x: x.float(), 2, batch_size=2, seq_len=3, mask_id=3),
         ValueError, r"^model: must map tokens \(B, L\)"),
        (lambda: sample(lambda x: torch.full((*x.shape, 3), float("nan")), 2, batch_size=2,
                        seq_len=3, mask_id=3), ValueError, "^model: returned NaN"),
        (lambda: sample(fn, 2, given=torch.tensor([7, 3, 3]), mask_id=3), ValueError,
         "^given: has token ids outside"),
        (lambda: sample(fn, 2, given=torch.tensor([-1, 3, 3]), mask_id=3), ValueError,
         "^given has negative"),
        (lambda: sample(model, 2, batch_size=2, return_kl=1), ValueError, "^return_kl:"),
    ]
    for call, err, match in cases:
        with pytest.raises(err, match=match):
            call()


@settings(max_examples=30, deadline=None)
@given(n_steps=st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.none(),
                         st.text(max_size=2)))
def test_sample_rejects_every_bad_n_steps(n_steps):
    with pytest.raises(ValueError, match="^n_steps:"):
        sample(lookup_model(3), n_steps, batch_size=2, seq_len=3, mask_id=3)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 4), length=st.integers(1, 5), vocab=st.integers(1, 4),
       steps=st.integers(1, 4), inside=st.booleans())
def test_any_shapes_and_mask_ids_reveal_everything(batch, length, vocab, steps, inside):
    mask_id = 0 if inside and vocab > 1 else vocab
    x = sample(lookup_model(vocab), steps, batch_size=batch, seq_len=length, mask_id=mask_id,
               generator=torch.Generator().manual_seed(0))
    assert x.shape == (batch, length) and not (x == mask_id).any()
    assert int(x.min()) >= 0 and int(x.max()) < vocab
