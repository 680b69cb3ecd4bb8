"""Smoke runs of the runners without a test of their own: tiny settings, files in tmp_path.

Each run goes through ``samplegrad_bench.cli.main`` exactly as a user's command does and checks
that the files it promises exist and name every method it ran.
"""

import json

import pytest

from samplegrad_bench.cli import main


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path, so relative output folders stay out of the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_ddpm_then_finetune(in_tmp):
    weights = in_tmp / "ddpm.pt"
    assert main(["train-ddpm", "--steps", "10", "--checkpoint", str(weights), "--threads",
                 "1"]) == 0
    assert weights.exists()
    assert (in_tmp / "runs" / "train-ddpm" / "train_ddpm.json").exists()  # default: runs/NAME
    assert main(["bench", "finetune", "--quick", "--checkpoint", str(weights), "--theta-steps",
                 "2", "--n-steps", "3", "--pop-size", "4", "--no-rss", "--out", "res",
                 "--threads", "1"]) == 0
    got = json.loads((in_tmp / "res" / "finetune_quick.json").read_text())
    text = json.dumps(got)
    assert "implicit" in text and "unrolled" in text


def test_train_mdm_then_guidance(in_tmp):
    assert main(["train-mdm", "--quick", "--task", "digits", "--steps", "4", "--checkpoint",
                 "mdm", "--out", "res", "--threads", "1"]) == 0
    stages = {p.stem for p in (in_tmp / "mdm" / "digits").glob("*.pt")}
    assert {"early", "middle", "final"} <= stages
    assert main(["bench", "guidance", "--quick", "--checkpoint", "mdm", "--tasks", "digits",
                 "--methods", "unguided,redge", "--n-digits", "4", "--out", "res",
                 "--threads", "1"]) == 0
    files = list((in_tmp / "res").glob("guidance_*.json"))
    assert files
    text = " ".join(f.read_text() for f in files)
    assert "unguided" in text and "redge" in text


def test_spectral_quick_gmm_section(in_tmp):
    assert main(["bench", "spectral", "--quick", "--sections", "gmm", "--neural-steps", "10",
                 "--out", "res", "--threads", "1"]) == 0
    out = in_tmp / "res" / "quick"  # quick runs never overwrite full results
    assert (out / "spectral_quick.json").exists() and (out / "gmm_score_error.png").exists()
    got = json.loads((out / "spectral_quick.json").read_text())
    assert "gmm" in got


def test_missing_checkpoints_name_the_command_that_creates_them(in_tmp, capsys):
    assert main(["bench", "finetune"]) == 1  # full run, nothing in the (test) cache
    err = capsys.readouterr().err
    assert "no DDPM weights at" in err and "`samplegrad train-ddpm`" in err
    assert main(["bench", "finetune", "--checkpoint", "nope.pt"]) == 1
    assert "samplegrad train-ddpm --checkpoint nope.pt" in capsys.readouterr().err
    assert main(["bench", "guidance", "--tasks", "digits"]) == 1
    assert "`samplegrad train-mdm --task digits`" in capsys.readouterr().err
    assert main(["bench", "guidance", "--quick", "--checkpoint", "none", "--tasks",
                 "sudoku"]) == 1
    assert "samplegrad train-mdm --task sudoku --checkpoint none" in capsys.readouterr().err


def test_speed_and_exactness_are_benches(in_tmp, capsys):
    assert main(["bench", "speed", "--quick", "--repeats", "2"]) == 0
    got = json.loads((in_tmp / "runs" / "speed" / "estimator_speed_quick.json").read_text())
    assert any(r["estimator"].startswith("redge") for r in got["rows"])
    assert main(["bench", "exactness", "--quick", "--draws", "500"]) == 0
    got = json.loads((in_tmp / "runs" / "exactness" / "sampling_exactness_quick.json")
                     .read_text())
    assert got["n_draws"] == 500 and len(got["rows"]) == 12
