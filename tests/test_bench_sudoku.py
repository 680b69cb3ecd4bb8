"""`samplegrad bench sudoku`: one optimization step per estimator family, and a tiny run."""

import argparse
import json

import pytest
import torch

from samplegrad_bench.cli import main
from samplegrad_bench.runners import sudoku as B
from samplegrad_bench.tasks import sudoku as S


@pytest.fixture(scope="module")
def puzzles():
    return S.generate_puzzles(3, seed=0, difficulty="easy")


@pytest.mark.parametrize("name", ["redge", "straight_through", "reinforce", "rloo"])
def test_step_moves_blank_logits_only_and_keeps_clues(puzzles, name):
    puz, _ = puzzles
    state = B.init(puz, lr=0.1)
    vals = B.step(state, name, B.method_knobs(name), n_samples=2)
    assert vals.shape == (3,) and torch.isfinite(vals).all()
    moved = state.logits.detach().abs().sum(-1) > 0  # (P, 81)
    assert not moved[puz > 0].any()  # clue cells get no gradient (clamped)
    assert moved[puz == 0].any()
    if name == "reinforce":
        torch.testing.assert_close(state.baseline, vals)  # first EMA value = first penalties
    m = B.evaluate(state.logits, puz, draws=3, generator=torch.Generator().manual_seed(0))
    grid = S.to_grid(S.clue_mask_logits(puz, state.logits.detach()))
    assert torch.equal(grid[puz > 0], puz[puz > 0])
    assert set(m) == {"solved", "violations", "sample_solved"}


def test_joint_score_function_step_sees_the_sum(puzzles):
    puz, _ = puzzles
    state = B.init(puz, lr=0.1)
    vals = B.step(state, "reinforce", B.method_knobs("reinforce"), n_samples=2, per_puzzle=False)
    assert torch.allclose(vals, vals[:1].expand(3))  # one value: the mean over puzzles
    assert (state.logits.detach()[puz == 0].abs().sum(-1) > 0).any()


def test_evaluate_counts_a_solved_puzzle(puzzles):
    puz, sol = puzzles
    logits = torch.zeros(3, 81, 9)
    logits[0] = 5 * torch.nn.functional.one_hot(sol[0] - 1, 9)  # puzzle 0 solved, others not
    m = B.evaluate(logits, puz, draws=4, generator=torch.Generator().manual_seed(0))
    assert m["solved"].tolist() == [1.0, 0.0, 0.0]
    assert m["violations"][0] == 0 and (m["violations"][1:] > 0).all()
    assert m["sample_solved"][1:].eq(0).all()


def test_straight_through_solves_an_easy_puzzle():
    puz, _ = S.generate_puzzles(1, seed=0, difficulty="easy")
    # (first solved at step 140-170 over seeds 0-2; measured once, the budget leaves a margin)
    cfg = B.SudokuConfig(n_puzzles=1, difficulties=("easy",), budgets=(200,), eval_draws=0,
                         eval_every=100)
    r = B.run_method("straight_through", puz, {"easy": torch.arange(1)}, cfg)
    assert r["budgets"]["200"]["solved"]["easy"] == 1.0
    assert 0 < r["first_solved"][0] <= 200


def test_cli_quick_smoke_writes_json_and_plot(tmp_path, capsys):
    argv = ["bench", "sudoku", "--quick", "--out", str(tmp_path), "--n-puzzles", "1",
            "--budgets", "2,4", "--methods", "redge,rloo", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| estimator" in out and "solved medium" in out
    data = json.loads((tmp_path / "sudoku_quick.json").read_text())
    assert set(data["results"]) == {"redge", "rloo"}
    assert len(data["rows"]) == 4 and data["settings"]["budgets"] == [2, 4]
    assert (tmp_path / "sudoku_quick_solved.png").stat().st_size > 0
    # --resume with the same settings reuses the stored estimators
    assert main(argv + ["--resume"]) == 0
    again = json.loads((tmp_path / "sudoku_quick.json").read_text())
    assert again["results"]["redge"]["curve"] == data["results"]["redge"]["curve"]


def test_bad_settings_are_usage_errors(tmp_path, capsys):
    for flag, value in (("--n-samples", "1"), ("--budgets", "10,0"), ("--lr", "-1"),
                        ("--methods", "redge,nope")):
        with pytest.raises(SystemExit) as e:
            main(["bench", "sudoku", "--out", str(tmp_path), flag, value])
        assert e.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n_samples"):  # the config checks it too
        B.config_from_args(argparse.Namespace(n_samples=1))


def test_tuned_without_a_sweep_names_the_command(tmp_path, capsys):
    assert main(["bench", "sudoku", "--out", str(tmp_path), "--tuned"]) == 1
    assert "samplegrad bench sudoku --sweep" in capsys.readouterr().err


def test_sweep_picks_a_setting_from_the_grid(tmp_path):
    cfg = B.SudokuConfig(n_puzzles=1, difficulties=("easy",), budgets=(2,), methods=("reinmax",))
    out = B.sweep(cfg, tmp_path)
    assert out["best"]["reinmax"] in B.SWEEP["reinmax"]
    assert len(out["rows"]) == len(B.SWEEP["reinmax"])
    assert out["settings"]["seed"] == 1000  # disjoint from the benchmark's puzzles
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["best"] == out["best"]
