"""`samplegrad bench sudoku`: one optimization step per estimator family, and a tiny run."""

import argparse
import json

import pytest
import torch

from samplegrad_bench._merge import MergeError
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
    # a run of other estimators into the same folder adds its rows to the earlier ones
    other = [a if a != "redge,rloo" else "straight_through" for a in argv]
    assert main(other) == 0
    both = json.loads((tmp_path / "sudoku_quick.json").read_text())
    assert set(both["results"]) == {"redge", "rloo", "straight_through"}
    assert both["results"]["redge"]["curve"] == data["results"]["redge"]["curve"]
    assert set(both["settings"]["knobs"]) == {"redge", "rloo", "straight_through"}
    assert {r["estimator"] for r in both["rows"]} == {"redge", "rloo", "straight_through"}


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


def _sudoku_results(names, solved, **settings):
    cfg = {**B._plain(B.config_from_args(argparse.Namespace(quick=True))), **settings}
    ds = cfg["difficulties"]
    budgets = {str(b): {"solved": dict.fromkeys(ds, solved),
                        "violations": dict.fromkeys(ds, 1.0),
                        "sample_solved": dict.fromkeys(ds, 0.0), "mean_penalty": 1.0}
               for b in cfg["budgets"]}
    results = {n: {"knobs": {}, "seconds": 1.0, "budgets": budgets, "first_solved": [],
                   "curve": {"step": [10, 20], **{d: [0.0, solved] for d in ds}}}
               for n in names}
    cfg["knobs"] = {n: {"tau": solved} for n in names}
    return {"settings": cfg, "results": results, "rows": [],
            "run_info": {"started": "then", "load_end": [3.0, 3.0, 3.0]}}


def test_merge_takes_the_runs_estimators_and_refuses_other_settings(tmp_path, capsys):
    base = _sudoku_results(["redge", "rloo"], 0.5)
    run = _sudoku_results(["rloo", "gst"], 1.0)
    merged = B.merge_results(base, run, "elsewhere")
    assert list(merged["results"]) == ["redge", "rloo", "gst"]
    assert merged["settings"]["knobs"] == {"redge": {"tau": 0.5}, "rloo": {"tau": 1.0},
                                           "gst": {"tau": 1.0}}
    last = [r for r in merged["rows"] if r["steps"] == 100]
    assert [(r["estimator"], r["solved easy"]) for r in last] == [
        ("redge", 0.5), ("rloo", 1.0), ("gst", 1.0)]
    assert [p["methods"] for p in merged["provenance"]] == [["redge"], ["rloo", "gst"]]
    assert merged["provenance"][1]["load_end"] == [3.0, 3.0, 3.0]
    with pytest.raises(MergeError, match="lr"):
        B.merge_results(base, _sudoku_results(["gst"], 1.0, lr=0.5), "x")
    for d, res in (("out", base), ("run", run)):
        (tmp_path / d).mkdir()
        (tmp_path / d / "sudoku_quick.json").write_text(json.dumps(res))
    assert main(["bench", "sudoku", "--quick", "--out", str(tmp_path / "out"),
                 "--merge-from", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "out" / "sudoku_quick.json").read_text())
    assert list(data["results"]) == ["redge", "rloo", "gst"]
    assert (tmp_path / "out" / "sudoku_quick_solved.png").stat().st_size > 1000
    assert "| gst" in capsys.readouterr().out


def test_merge_of_knob_sweeps(tmp_path):
    def sweep(names, seed=1000):
        return {"settings": {"n_puzzles": 4, "seed": seed, "methods": []},
                "rows": [{"estimator": n, "knobs": "tau=1"} for n in names],
                "best": {n: {"tau": 1.0} for n in names},
                "runs": {n: [] for n in names}}

    merged = B.merge_results(sweep(["redge", "gst"]), sweep(["gst", "relax"]), "x")
    assert list(merged["best"]) == ["redge", "gst", "relax"]
    assert [r["estimator"] for r in merged["rows"]] == ["redge", "gst", "relax"]
    with pytest.raises(MergeError, match="seed"):
        B.merge_results(sweep(["redge"]), sweep(["gst"], seed=1), "x")
