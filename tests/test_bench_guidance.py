"""`samplegrad bench guidance --merge-from`: rows of a separate run merged into results."""

import json
from dataclasses import asdict

import pytest

from samplegrad_bench._merge import MergeError
from samplegrad_bench.cli import main
from samplegrad_bench.runners.guidance import BenchConfig, merge_results


def _guidance_results(names, value, **bench):
    rows = [{"task": "digits", "checkpoint": ck, "estimator": n, "log p(target)": value,
             "P(class = target)": 0.5, "path KL": 1.0, "time (s)": 1.0,
             "graph MiB/opt step": 0.1} for ck in ("early", "final") for n in names]
    settings = {"bench": {**asdict(BenchConfig()), **bench},
                "estimator_knobs": {n: {} for n in names}, "seed": 0, "threads": 1}
    return {"settings": settings, "rows": rows, "complete": True,
            "run_info": {"started": "then", "load_start": [5.0, 5.0, 5.0]}}


def test_merge_takes_the_runs_estimators_and_refuses_other_settings(tmp_path, capsys):
    base = _guidance_results(["unguided", "redge", "rloo"], -1.0)
    run = _guidance_results(["rloo", "gst"], -0.5, methods=("rloo", "gst"))
    merged = merge_results(base, run, "elsewhere")
    assert [(r["checkpoint"], r["estimator"], r["log p(target)"]) for r in merged["rows"]] == [
        (ck, n, v) for ck in ("early", "final")
        for n, v in (("unguided", -1.0), ("redge", -1.0), ("rloo", -0.5), ("gst", -0.5))]
    assert set(merged["settings"]["estimator_knobs"]) == {"unguided", "redge", "rloo", "gst"}
    assert [p["methods"] for p in merged["provenance"]] == [["unguided", "redge"],
                                                            ["rloo", "gst"]]
    with pytest.raises(MergeError, match="n_opt_steps"):
        merge_results(base, _guidance_results(["gst"], 0.0, n_opt_steps=3), "x")
    for d, res in (("out", base), ("run", run)):
        (tmp_path / d).mkdir()
        (tmp_path / d / "guidance_digits_quick.json").write_text(json.dumps(res))
    assert main(["bench", "guidance", "--quick", "--tasks", "digits", "--out",
                 str(tmp_path / "out"), "--merge-from", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "out" / "guidance_digits_quick.json").read_text())
    assert [r["estimator"] for r in data["rows"]][:4] == ["unguided", "redge", "rloo", "gst"]
    assert "| gst" in capsys.readouterr().out


def test_merge_of_a_run_on_one_checkpoint_keeps_the_other():
    base = _guidance_results(["unguided", "redge"], -1.0)
    run = _guidance_results(["gst"], -0.5, checkpoints=("final",))
    run["rows"] = [r for r in run["rows"] if r["checkpoint"] == "final"]
    merged = merge_results(base, run, "elsewhere")
    assert [(r["checkpoint"], r["estimator"]) for r in merged["rows"]] == [
        ("early", "unguided"), ("early", "redge"),
        ("final", "unguided"), ("final", "redge"), ("final", "gst")]
    assert merged["provenance"][-1]["checkpoints"] == ["final"]
    with pytest.raises(MergeError, match="checkpoints"):
        merge_results(base, _guidance_results(["gst"], 0.0, checkpoints=("weak",)), "x")
