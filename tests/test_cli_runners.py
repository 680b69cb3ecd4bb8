"""Smoke runs of the runners without a test of their own: tiny settings, files in tmp_path.

Each run goes through ``samplegrad_bench.cli.main`` exactly as a user's command does and checks
that the files it promises exist and name every method it ran.
"""

import json

import pytest

from samplegrad_bench.cli import main


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path, so relative caches (checkpoints/) never touch the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_ddpm_then_finetune(in_tmp):
    weights = in_tmp / "ddpm.pt"
    assert main(["train-ddpm", "--steps", "10", "--weights", str(weights), "--out", "res",
                 "--threads", "1"]) == 0
    assert weights.exists()
    assert main(["bench", "finetune", "--quick", "--weights", str(weights), "--theta-steps",
                 "2", "--n-steps", "3", "--pop-size", "4", "--no-rss", "--out", "res",
                 "--threads", "1"]) == 0
    got = json.loads((in_tmp / "res" / "finetune" / "finetune_quick.json").read_text())
    text = json.dumps(got)
    assert "implicit" in text and "unrolled" in text


def test_train_mdm_then_guidance(in_tmp):
    assert main(["train-mdm", "--quick", "--task", "digits", "--steps", "4", "--ckpt-dir",
                 "mdm", "--out", "res", "--threads", "1"]) == 0
    stages = {p.stem for p in (in_tmp / "mdm-quick" / "digits").glob("*.pt")}
    assert {"early", "middle", "final"} <= stages
    assert main(["bench", "guidance", "--quick", "--ckpt-dir", "mdm-quick", "--tasks", "digits",
                 "--methods", "unguided,redge", "--n-digits", "4", "--out", "res",
                 "--threads", "1"]) == 0
    files = list((in_tmp / "res" / "guidance").glob("*.json"))
    assert files
    text = " ".join(f.read_text() for f in files)
    assert "unguided" in text and "redge" in text


def test_spectral_quick_gmm_section(in_tmp):
    assert main(["bench", "spectral", "--quick", "--sections", "gmm", "--neural-steps", "10",
                 "--out", "res", "--threads", "1"]) == 0
    out = in_tmp / "res" / "spectral" / "quick"  # quick runs never overwrite full results
    assert (out / "spectral_quick.json").exists() and (out / "gmm_score_error.png").exists()
    got = json.loads((out / "spectral_quick.json").read_text())
    assert "gmm" in got
