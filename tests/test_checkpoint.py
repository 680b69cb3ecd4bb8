"""samplegrad.checkpoint: two good checkpoints kept, damaged files reported by path and
survived (the previous one is used), clear errors when none is usable, exact training-state
round trips (generators included)."""

import os
import random
import signal
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samplegrad.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    DeferredInterrupt,
    load_cache,
    load_checkpoint,
    load_training_state,
    previous_path,
    read_training_state,
    remove_checkpoint,
    save_checkpoint,
    save_training_state,
)


def _truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _empty(p):
    p.write_bytes(b"")


def _random_bytes(p):
    p.write_bytes(random.Random(0).randbytes(p.stat().st_size))


def _flip_a_byte(p):  # inside a tensor record: torch.load alone would not notice
    data = bytearray(p.read_bytes())
    i = data.index(b"data/0") + 200
    data[i] ^= 0xFF
    p.write_bytes(bytes(data))


def _text(p):
    p.write_text('{"step": 3}\n')


DAMAGE = {"truncated": _truncate, "empty": _empty, "random bytes": _random_bytes,
          "flipped byte": _flip_a_byte, "another format": _text}
REASON = {"truncated": "truncated", "empty": "empty file", "random bytes": "not a checkpoint",
          "flipped byte": "checksum mismatch", "another format": "not a checkpoint"}


def _payload(i):
    return {"step": i, "w": torch.arange(300.0) * i}


def test_keeps_the_last_two_good_checkpoints(tmp_path):
    path = tmp_path / "run.pt"
    assert load_checkpoint(path) is None  # nothing yet
    save_checkpoint(path, _payload(1))
    assert not previous_path(path).exists()
    save_checkpoint(path, _payload(2))
    save_checkpoint(path, _payload(3))
    assert load_checkpoint(path)["step"] == 3
    assert load_checkpoint(previous_path(path))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt", "run.pt.prev"]  # no .tmp
    remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, kind):
    path = tmp_path / "run.pt"
    save_checkpoint(path, _payload(1))
    save_checkpoint(path, _payload(2))
    DAMAGE[kind](path)
    with pytest.warns(CheckpointWarning) as rec:
        got = load_checkpoint(path)
    assert got["step"] == 1 and torch.equal(got["w"], _payload(1)["w"])
    msg = str(rec[0].message)
    assert str(path) in msg and str(previous_path(path)) in msg and REASON[kind] in msg


@pytest.mark.parametrize("kind", DAMAGE)
def test_no_usable_checkpoint_is_a_clear_error_naming_both_files(tmp_path, kind):
    path = tmp_path / "run.pt"
    save_checkpoint(path, _payload(1))
    save_checkpoint(path, _payload(2))
    DAMAGE[kind](path)
    _empty(previous_path(path))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and str(previous_path(path)) in str(e.value)
    assert REASON[kind] in str(e.value) and "empty file" in str(e.value)
    assert "delete these files to start over" in str(e.value)
    assert e.value.path == path and len(e.value.problems) == 2


def test_a_single_damaged_file_without_previous_is_an_error(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, _payload(1))
    _truncate(path)
    with pytest.raises(CheckpointError, match=r"run\.pt: truncated.*run\.pt\.prev: missing"):
        load_checkpoint(path)


def test_a_missing_latest_uses_the_previous_with_a_warning(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, _payload(1))
    save_checkpoint(path, _payload(2))
    path.unlink()
    with pytest.warns(CheckpointWarning, match="is missing"):
        assert load_checkpoint(path)["step"] == 1


def test_saving_over_a_damaged_file_keeps_the_good_previous_one(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, _payload(1))
    save_checkpoint(path, _payload(2))
    _truncate(path)
    save_checkpoint(path, _payload(3))  # the damaged file is not rotated over the good .prev
    assert load_checkpoint(previous_path(path))["step"] == 1
    assert load_checkpoint(path)["step"] == 3


def test_the_check_hook_rejects_other_formats(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, _payload(1))
    save_checkpoint(path, [1, 2, 3])  # a valid torch file, but not what we expect

    def check(p):
        p["step"]

    with pytest.warns(CheckpointWarning, match="wrong format"):
        assert load_checkpoint(path, check=check)["step"] == 1


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=3000), cut=st.floats(0, 1))
def test_any_bytes_in_place_of_the_checkpoint_are_survived(tmp_path, blob, cut):
    path = tmp_path / "h.pt"
    remove_checkpoint(path)
    save_checkpoint(path, _payload(1))
    save_checkpoint(path, _payload(2))
    good = path.read_bytes()
    damaged = blob + good[: int(cut * len(good))]
    path.write_bytes(damaged)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = load_checkpoint(path)
    if damaged == good:  # no junk and nothing cut: the newest file is intact and loads
        assert got["step"] == 2 and not rec
    else:
        assert got["step"] == 1 and any(issubclass(w.category, CheckpointWarning) for w in rec)


def test_training_state_round_trip_with_generators_and_rngs(tmp_path):
    path = tmp_path / "t.pt"
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        model(torch.randn(4, 3, generator=gen)).sum().backward()
        opt.step()
    torch.manual_seed(11)
    random.seed(3)
    save_training_state(path, {"model": model, "opt": opt, "gen": gen}, step=2,
                        losses=[0.5, 0.25], smoothed=0.3)
    expect = (torch.randn(3, generator=gen), torch.rand(2), random.random())

    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    gen2 = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    got = load_training_state(path, {"model": model2, "opt": opt2, "gen": gen2})
    assert got == {"step": 2, "losses": [0.5, 0.25], "smoothed": 0.3}
    again = (torch.randn(3, generator=gen2), torch.rand(2), random.random())
    assert torch.equal(again[0], expect[0]) and torch.equal(again[1], expect[1])
    assert again[2] == expect[2]
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    # a payload without an entry asked for, or of another version, is "wrong format"
    with pytest.raises(CheckpointError, match="wrong format"):
        read_training_state(path, ["model", "scheduler"])
    with pytest.raises(ValueError, match="^step: must be a non-negative integer"):
        save_training_state(path, {}, step=-1)


def test_training_state_falls_back_to_the_previous_save(tmp_path):
    path = tmp_path / "t.pt"
    model = torch.nn.Linear(2, 2)
    save_training_state(path, {"model": model}, step=1)
    first = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    save_training_state(path, {"model": model}, step=2)
    _random_bytes(path)
    fresh = torch.nn.Linear(2, 2)
    with pytest.warns(CheckpointWarning, match="random|not a checkpoint"):
        got = load_training_state(path, {"model": fresh})
    assert got["step"] == 1
    assert torch.equal(fresh.weight, first)


def test_load_cache_recomputes_damaged_files(tmp_path):
    path = tmp_path / "c.pt"
    assert load_cache(path) is None
    save_checkpoint(path, {"x": torch.ones(3)})
    assert torch.equal(load_cache(path)["x"], torch.ones(3))
    _truncate(path)
    with pytest.warns(CheckpointWarning, match="recomputing it"):
        assert load_cache(path) is None
    assert not path.exists()


def test_deferred_interrupt_turns_sigint_into_a_flag():
    with DeferredInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            stop.raise_if_requested()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
