"""`bench finetune` with the recompute method (path_memory="recompute") and --methods."""

import dataclasses
import json
import re

import pytest

from samplegrad_bench.cli import main


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory):
    from samplegrad_bench.runners import train_ddpm as ddpm_runner

    weights = tmp_path_factory.mktemp("ddpm") / "tiny.pt"
    ddpm_runner.train_ddpm(dataclasses.replace(ddpm_runner.QUICK, steps=5), weights,
                           verbose=False)
    return weights


def test_recompute_method_runs_and_reports_its_memory(tiny_ddpm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "finetune", "--quick", "--checkpoint", str(tiny_ddpm), "--methods",
                 "recompute,implicit", "--theta-steps", "2", "--n-steps", "3", "--pop-size", "4",
                 "--no-rss", "--out", "res", "--threads", "1"]) == 0
    got = json.loads((tmp_path / "res" / "finetune_quick.json").read_text())
    assert got["meta"]["settings"]["methods"] == ["recompute", "implicit"]
    rows = {(r["reward_name"], r["method"]): r for r in got["rows"]}
    assert {m for _, m in rows} == {"recompute", "implicit"}
    rec, imp = rows[("brightness", "recompute")], rows[("brightness", "implicit")]
    # one path (T + 1) N 64 floats against the queue's T (T + 1) N 64 (+ its stage counters)
    assert rec["state_kib"] == pytest.approx(4 * 4 * 64 * 4 / 1024)
    assert imp["state_kib"] >= 3 * rec["state_kib"]
    # one adjoint step each; the saved-tensor byte counter varies by about 1 KiB between calls
    # (seen: 26.07 vs 27.07), far below the T-fold growth a kept path graph would show
    assert rec["activation_kib"] == pytest.approx(imp["activation_kib"], rel=0.1)
    md = (tmp_path / "res" / "finetune_quick.md").read_text()
    assert re.search(r"\|\s*brightness\s*\|\s*3\s*\|\s*recompute\s*\|", md)


def test_unknown_method_is_a_usage_error_naming_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["bench", "finetune", "--methods", "implicit,queue"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--methods" in err and "recompute" in err


# ---------------------------------------------------------------- --study memory | stale
def test_memory_study_quick_writes_its_files_and_recompute_holds_less(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "finetune", "--study", "memory", "--quick", "--out", "res",
                 "--threads", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # nothing elsewhere
    folder = tmp_path / "res" / "studies"
    assert {p.name for p in folder.iterdir()} == {"mem_quick.json", "cputime_quick.json",
                                                  "mem_quick.md", "mem_quick.png"}
    rows = {r["design"]: r for r in json.loads((folder / "mem_quick.json").read_text())}
    assert set(rows) == {"full", "recompute", "checkpoint", "unrolled"}
    t, n = rows["full"]["T"], rows["full"]["pop_size"]
    # the queue keeps T paths of (T + 1) N 64 floats; recompute one path, during the step only
    assert rows["full"]["state_kib"] == pytest.approx(t * (t + 1) * n * 64 * 4 / 1024)
    assert rows["recompute"]["state_kib"] == 0
    assert rows["recompute"]["transient_kib"] == pytest.approx((t + 1) * n * 64 * 4 / 1024)
    assert rows["recompute"]["peak_tensor_kib"] < rows["full"]["peak_tensor_kib"]
    assert rows["checkpoint"]["peak_tensor_kib"] <= rows["recompute"]["peak_tensor_kib"]
    cpu = {r["design"]: r for r in json.loads((folder / "cputime_quick.json").read_text())}
    assert cpu["unrolled"]["vs_unrolled"] == 1.0 and cpu["full"]["cpu_ms_step"] > 0
    md = (folder / "mem_quick.md").read_text()
    assert re.search(rf"\|\s*{t}\s*\|\s*recompute\s*\|", md)


def test_stale_study_quick_writes_its_files_and_resumes(tiny_ddpm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "finetune", "--study", "stale", "--quick", "--checkpoint", str(tiny_ddpm),
            "--theta-steps", "2", "--out", "res", "--threads", "1"]
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    folder = tmp_path / "res" / "studies"
    assert {p.name for p in folder.iterdir()} == {"stale_T3_quick.jsonl", "stale_T3_quick.md",
                                                  "stale_T3_quick.png"}
    lines = (folder / "stale_T3_quick.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert sorted(r["method"] for r in rows) == ["delay2", "full", "recompute", "unrolled"]
    assert all(r["T"] == 3 and [e["step"] for e in r["evals"]] == [0, 2] for r in rows)
    assert all(len(r["trace"]) == 2 for r in rows)
    md = (folder / "stale_T3_quick.md").read_text()
    assert re.search(r"\|\s*delay2\s*\|\s*3\s*\|\s*0.003\s*\|\s*1e-05\s*\|\s*1\s*\|", md)
    assert main(argv) == 0  # a rerun with the same settings skips the runs already there
    assert (folder / "stale_T3_quick.jsonl").read_text().splitlines() == lines


def test_study_tables_reproduce_the_published_ones():
    from pathlib import Path

    from samplegrad_bench.runners import _finetune_studies as st

    root = Path(__file__).resolve().parents[1]
    folder = root / "docs" / "results" / "finetune" / "studies"
    doc = (root / "docs" / "benchmarks" / "finetune.md").read_text()
    mem = json.loads((folder / "mem.json").read_text())
    cpu = json.loads((folder / "cputime.json").read_text())
    assert st.memory_table(mem, cpu) in doc
    for t in (10, 25):
        assert st.stale_table(st.read_jsonl(folder / f"stale_T{t}.jsonl")) in doc


def test_unknown_study_and_misplaced_study_flags_are_usage_errors(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, words in ((["--study", "speed"], ("--study", "memory")),
                        (["--study", "memory", "--methods", "delay2"], ("--methods", "checkpoint")),
                        (["--methods", "checkpoint"], ("--methods", "implicit")),
                        (["--lr-grid", "1e-4"], ("--lr-grid", "--study"))):
        with pytest.raises(SystemExit) as e:
            main(["bench", "finetune", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
