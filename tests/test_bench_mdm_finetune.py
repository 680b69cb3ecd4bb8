"""`samplegrad bench mdm-finetune --quick`: a tiny end-to-end run through the CLI."""

import json

import pytest

from samplegrad_bench.cli import main


@pytest.mark.slow  # trains a tiny MDM and the digit classifier (cached per session)
def test_quick_run_writes_every_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train-mdm", "--quick", "--task", "digits", "--steps", "4", "--checkpoint",
                 "mdm", "--out", "res", "--threads", "1"]) == 0
    args = ["bench", "mdm-finetune", "--quick", "--checkpoint", "mdm", "--estimators",
            "straight_through", "--theta-steps", "2", "--n-steps", "3", "--out", "res",
            "--threads", "1"]
    assert main(args) == 0
    got = json.loads((tmp_path / "res" / "mdm_finetune_quick.json").read_text())
    assert got["complete"]
    assert {r["method"] for r in got["rows"]} == {"unrolled", "truncated", "queue", "reinforce"}
    assert (tmp_path / "res" / "samples_quick.png").exists()
    assert main(args) == 0  # a rerun with the same settings reuses the saved runs
    with pytest.raises(SystemExit) as e:  # K > T: a usage error
        main([*args[:-2], "--truncate", "4", "--threads", "1"])
    assert e.value.code == 2


@pytest.mark.slow  # trains a tiny infilling MDM (seconds) and makes a few puzzles
def test_quick_sudoku_run_evaluates_heldout_puzzles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train-mdm", "--quick", "--task", "sudoku-infill", "--steps", "4",
                 "--checkpoint", "mdm", "--out", "res", "--threads", "1"]) == 0
    train = json.loads((tmp_path / "res" / "train_mdm_sudoku-infill_quick.json").read_text())
    final = train["stages"]["final"]
    assert 0.0 <= final["puzzles_solved_unguided"] <= 1.0
    assert final["heldout_infill_nelbo_per_free_token"] > 0
    args = ["bench", "mdm-finetune", "--task", "sudoku", "--quick", "--checkpoint", "mdm",
            "--theta-steps", "2", "--n-steps", "3", "--out", "res", "--threads", "1"]
    assert main(args) == 0
    got = json.loads((tmp_path / "res" / "mdm_finetune_sudoku_quick.json").read_text())
    assert got["complete"] and got["model"]["final"]["step"] == 4
    assert {(r["method"], r["estimator"]) for r in got["rows"]} == {
        ("unrolled", "redge"), ("truncated", "redge"), ("queue", "redge"), ("reinforce", "-")}
    for r in [got["base"], *got["rows"]]:
        assert 0.0 <= r["solved"] <= 1.0 and 0.0 <= r["solved guided"] <= 1.0
        assert r["violations"] >= 0 and r["path KL"] >= 0
    assert (tmp_path / "res" / "sudoku_grids_quick.png").exists()
    # another selection in a second invocation: the saved runs are kept
    assert main([*args, "--methods", "unrolled", "--estimators", "gumbel_soft"]) == 0
    got = json.loads((tmp_path / "res" / "mdm_finetune_sudoku_quick.json").read_text())
    assert len(got["rows"]) == 5 and ("unrolled", "gumbel_soft") in {
        (r["method"], r["estimator"]) for r in got["rows"]}
    assert not (tmp_path / "res" / "mdm_finetune_quick.json").exists()  # digits untouched
