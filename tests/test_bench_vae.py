"""Smoke runs of `samplegrad bench vae`: table, JSON, plot, checkpoints reused on rerun."""

import json

import numpy as np
import pytest

from samplegrad_bench._merge import MergeError
from samplegrad_bench.cli import main
from samplegrad_bench.data import write_idx
from samplegrad_bench.runners.vae import _NEW_SETTINGS, merge_results, smooth_curve, summarize


def _args(tmp_path, *extra):
    return ["bench", "vae", "--quick", "--steps", "4", "--iwae-samples", "8", "--out",
            str(tmp_path / "res"), "--checkpoints", str(tmp_path / "ck"), "--threads", "1",
            *extra]


def test_quick_digits_writes_table_json_plot_and_reuses_checkpoints(tmp_path, capsys):
    argv = _args(tmp_path, "--methods", "redge_exact,rloo", "--seeds", "1")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| estimator" in out and "redge_exact" in out and "rloo" in out
    res = tmp_path / "res"
    data = json.loads((res / "digits_20x10_quick.json").read_text())
    assert {r["estimator"] for r in data["rows"]} == {"redge_exact", "rloo"}
    assert len(data["runs"]) == 2 and data["settings"]["steps"] == 4
    assert "seeds [1]" in data["header"]  # --seeds lists the seeds themselves
    for r in data["runs"]:
        assert np.isfinite([r["train_neg_elbo"], r["test_neg_elbo"], r["test_neg_iwae"]]).all()
        # 20 binary-ish latents of 10 classes on 64 pixels: a loss in a sane range (nats)
        assert 0 < r["test_neg_iwae"] < 64 * np.log(2) + 1
    assert (res / "digits_20x10_quick.png").stat().st_size > 1000
    assert "| rloo" in (res / "digits_20x10_quick.md").read_text()
    ckpts = sorted((tmp_path / "ck" / "digits_20x10_quick").glob("*.pt"))
    assert len(ckpts) == 2
    # a rerun reuses the finished runs: same numbers, no retraining (files untouched)
    mtimes = [p.stat().st_mtime_ns for p in ckpts]
    assert main(argv) == 0
    again = json.loads((res / "digits_20x10_quick.json").read_text())
    assert again["runs"] == data["runs"]
    assert [p.stat().st_mtime_ns for p in ckpts] == mtimes


def test_quick_fashion_on_tiny_idx_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fm"
    folder.mkdir()
    for stem, n in (("train", 40), ("t10k", 12)):
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    argv = _args(tmp_path, "--dataset", "fashion", "--data-root", str(folder),
                 "--methods", "gumbel_soft", "--test-subset", "5")
    assert main(argv) == 0
    data = json.loads((tmp_path / "res" / "fashion_48x2_quick.json").read_text())
    assert data["settings"]["config"] == "48x2" and data["settings"]["test_subset"] == 5
    assert "dynamic binarization" in data["header"] and "first 5 test images" in data["header"]
    assert np.isfinite(data["runs"][0]["test_neg_iwae"])


def test_an_iwae_row_runs_alone(tmp_path, capsys):
    """--methods 'redge (IWAE)' trains that row only, not redge's -ELBO row."""
    assert main(_args(tmp_path, "--methods", "redge (IWAE),rloo", "--seeds", "0")) == 0
    data = json.loads((tmp_path / "res" / "digits_20x10_quick.json").read_text())
    assert [r["estimator"] for r in data["runs"]] == ["rloo", "redge (IWAE)"]


def test_unknown_method_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, "--methods", "rloo,nope"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --methods: unknown 'nope'; choose from" in err and "redge_exact" in err


def test_smooth_curve_and_summary():
    curve = smooth_curve([float(i) for i in range(1, 101)], window=10, every=50)
    assert curve == [[50, 45.5], [100, 95.5]]  # mean of steps 41..50 and 91..100
    runs = [{"estimator": "a", "knobs": {"t1": 0.5}, "n_samples": 1, "train_neg_elbo": v,
             "test_neg_elbo": v, "test_neg_iwae": v, "ms_per_step": 1.0} for v in (1.0, 3.0)]
    rows = summarize(runs + [{**runs[0], "estimator": "b", "test_neg_iwae": 0.5}])
    assert [r["estimator"] for r in rows] == ["b", "a"]
    assert rows[1]["test −IWAE"] == "2.00 ± 1.41" and rows[1]["knobs"] == "t1=0.5"
    # RELAX's default control=None is shown as the per-run control variate it trains with
    relax = summarize([{**runs[0], "estimator": "relax", "knobs": {"tau": 0.5, "control": None}}])
    assert relax[0]["knobs"] == "tau=0.5, control=learned, one per run"


def _vae_results(names, value, seeds=(0,), **settings):
    from dataclasses import asdict

    from samplegrad_bench.runners.vae import defaults

    s = {**asdict(defaults("digits", True)), "config": "48x2", **settings}
    runs = [{"estimator": n, "seed": sd, "n_samples": 1, "knobs": {}, "train_neg_elbo": value,
             "test_neg_elbo": value, "test_neg_iwae": value, "train_seconds": 1.0,
             "ms_per_step": 1.0, "eval_seconds": 1.0, "curve": [[1, value], [2, value]]}
            for n in names for sd in seeds]
    return {"settings": s, "header": "Categorical VAE. Nats per image.", "rows": [],
            "runs": runs, "run_info": {"started": "then", "load_start": [4.0, 4.0, 4.0]}}


def test_merge_takes_the_runs_estimators_and_refuses_other_settings(tmp_path, capsys):
    base = _vae_results(["redge", "rloo"], 20.0, seeds=(0, 1, 2))
    for k in _NEW_SETTINGS:
        base["settings"].pop(k)
    run = _vae_results(["rloo", "disarm"], 19.0)
    run["header"] = "Categorical VAE. Skipped x: binary variables only."
    merged = merge_results(base, run, "elsewhere")
    assert {(r["estimator"], r["seeds"]) for r in merged["rows"]} == {
        ("redge", 3), ("rloo", 1), ("disarm", 1)}
    assert "Skipped x: binary variables only." in merged["header"]
    assert "rloo, disarm come from a separate run with seeds [0]" in merged["header"]
    assert [p["methods"] for p in merged["provenance"]] == [["redge"], ["rloo", "disarm"]]
    # a later run of the same estimators replaces the earlier merge's note, not only its rows
    again = merge_results(merged, {**run, "run_info": {"started": "later"}}, "elsewhere")
    assert again["header"].count("Merged:") == 1 and "(later;" in again["header"]
    partial = merge_results(merged, _vae_results(["disarm"], 18.0), "elsewhere")
    assert partial["header"].count("Merged:") == 2  # rloo's rows still come from the first
    with pytest.raises(MergeError, match="lr"):
        merge_results(base, _vae_results(["disarm"], 1.0, lr=1.0), "x")
    for d, res in (("out", base), ("run", run)):
        (tmp_path / d).mkdir()
        (tmp_path / d / "digits_48x2_quick.json").write_text(json.dumps(res))
    assert main(["bench", "vae", "--quick", "--config", "48x2", "--out", str(tmp_path / "out"),
                 "--merge-from", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "out" / "digits_48x2_quick.json").read_text())
    assert {r["estimator"] for r in data["runs"]} == {"redge", "rloo", "disarm"}
    assert "| disarm" in (tmp_path / "out" / "digits_48x2_quick.md").read_text()
    assert (tmp_path / "out" / "digits_48x2_quick.png").stat().st_size > 1000
    assert "| disarm" in capsys.readouterr().out
