"""The command line: listing, the demo on tiny settings, clear errors."""

import json

import pytest

from samplegrad_bench.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "redge" in out and "polyprog" in out


def test_demo_quick_writes_table_and_json(tmp_path, capsys):
    assert main(["demo", "--quick", "--steps", "3", "--draws", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| estimator" in out and "redge_exact" in out and "Gradient quality" in out
    data = json.loads((tmp_path / "demo" / "polyprog_demo.json").read_text())
    assert {r["estimator"] for r in data["rows"]} >= {"redge", "rloo", "gumbel_hard"}
    grad = json.loads((tmp_path / "demo" / "gradients_demo.json").read_text())
    rows = {r["estimator"]: r for r in grad["rows"]}
    assert {"redge", "reinforce", "rloo", "straight_through"} <= set(rows)
    assert all(r["variance"] >= 0 and -1 <= r["cosine"] <= 1 for r in rows.values())


def test_unknown_bench_is_an_error():
    with pytest.raises(SystemExit):
        main(["bench", "nope"])


def test_bench_gradients_tiny_run_writes_json_and_plot(tmp_path, capsys):
    argv = ["bench", "gradients", "--quick", "--n-draws", "20", "--methods", "redge",
            "gumbel_hard", "rloo", "reinforce", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "| estimator" in capsys.readouterr().out
    data = json.loads((tmp_path / "gradients" / "gradients_quick.json").read_text())
    best = data["best"]["mlp_L4_K5"]
    assert {r["estimator"] for r in best} == {"redge", "gumbel_hard", "rloo", "reinforce"}
    # grid: redge 2 t1 x 2 n_steps, gumbel 2 taus, rloo 1, reinforce 2 baselines; 2 n each
    assert len(data["rows"]) == (4 + 2 + 1 + 2) * 2
    assert (tmp_path / "gradients" / "gradients_quick.png").stat().st_size > 0


def test_bench_polyprog_tiny_run_writes_json_and_resumes(tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["bench", "polyprog", "--quick", "--steps", "4", "--sweep-steps", "2", "--n-vars",
            "8", "--batch", "8", "--seeds", "0", "1", "--powers", "2", "3", "--sweep-power", "2",
            "--methods", "redge", "reinforce", "rloo", "--cache", str(cache),
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "gap to optimum" in capsys.readouterr().out
    path = tmp_path / "polyprog" / "polyprog_quick.json"
    data = json.loads(path.read_text())
    assert {r["estimator"] for r in data["rows"]} == {"redge", "reinforce", "rloo"}
    # knobs swept once (at p=2, 4 + 2 + 1 settings), then 3 methods x 2 powers x 2 seeds
    assert len(data["runs"]) == 12 and len(data["sweep"]) == 4 + 2 + 1
    assert {s["power"] for s in data["sweep"]} == {2.0}
    n_cached = len(list(cache.iterdir()))
    assert n_cached == 12 + 7
    assert main(argv) == 0  # a second run reads every run back from the cache
    again = json.loads(path.read_text())
    assert len(list(cache.iterdir())) == n_cached
    assert [r["final E[loss]"] for r in again["rows"]] == [r["final E[loss]"]
                                                          for r in data["rows"]]
