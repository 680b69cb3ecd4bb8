"""The command line: listing, the demo on tiny settings, clear errors."""

import json

import pytest

from samplegrad.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "redge" in out and "polyprog" in out


def test_demo_quick_writes_table_and_json(tmp_path, capsys):
    assert main(["demo", "--quick", "--steps", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| estimator" in out and "redge_exact" in out
    data = json.loads((tmp_path / "demo" / "polyprog_demo.json").read_text())
    assert {r["estimator"] for r in data["rows"]} >= {"redge", "rloo", "gumbel_hard"}


def test_unknown_bench_is_an_error():
    with pytest.raises(SystemExit):
        main(["bench", "nope"])
