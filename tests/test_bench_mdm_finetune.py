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
