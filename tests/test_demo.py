"""`samplegrad demo`: the three-part tour on --quick settings writes a non-empty figure and a
JSON of finite numbers into --out, and nothing anywhere else."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samplegrad_bench import cli
from samplegrad_bench.cli import main
from samplegrad_bench.runners import _demo_figure, _demo_parts, demo

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _numbers(obj, path="$"):
    """Every number in a JSON tree, with its path (strings such as "nan" are flagged too)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, bool):
        return
    elif isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, str) and obj.lower() in ("nan", "inf", "-inf", "infinity"):
        yield path, float(obj)


def _checkout_state() -> dict[str, float]:
    """mtimes of what the demo could touch in the checkout (its published and default output)."""
    state = {}
    for folder in (REPO / "docs" / "results" / "demo", REPO / "runs" / "demo"):
        if folder.is_dir():
            state.update({str(p): p.stat().st_mtime for p in folder.iterdir()})
    return state


def _check_outputs(out: Path) -> dict:
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "demo.png"]
    png = (out / "demo.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000  # three panels, not an empty canvas
    data = json.loads((out / "demo.json").read_text())
    assert {"categorical", "implicit", "spectral"} <= set(data)
    bad = [(p, v) for p, v in _numbers(data) if not math.isfinite(v)]
    assert not bad, f"non-finite numbers in demo.json: {bad[:5]}"
    assert data["figure"] == "demo.png"  # relative: the published JSON names no local path
    return data


def test_quick_demo_writes_figure_and_json_only_under_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = _checkout_state()
    assert main(["demo", "--quick", "--out", "out"]) == 0
    stdout, stderr = capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert _checkout_state() == before
    data = _check_outputs(tmp_path / "out")

    # 1. one row per estimator, both scores side by side
    rows = {r["estimator"]: r for r in data["categorical"]["rows"]}
    assert {"redge", "redge_cov", "redge_max", "redge_exact", "straight_through",
            "gumbel_soft", "gumbel_hard", "reinmax", "reinforce", "rloo"} <= set(rows)
    optimum = data["categorical"]["polynomial_program"]["optimum"]
    for r in rows.values():
        assert r["final E[loss]"] >= optimum - 1e-9  # the exact loss cannot beat the optimum
        assert r["gradient MSE"] >= 0 and r["variance"] >= 0 and -1 <= r["cosine"] <= 1
    assert {r["family"] for r in rows.values()} >= {"ReDGE", "classic"}

    # 2. both methods ran for the same budget; the speed-up is the ratio of the two times
    imp = data["implicit"]
    budget = imp["settings"]["budget_s"]
    methods = list(imp["methods"].values())
    assert len(methods) == 2
    for m in methods:
        assert m["time (s)"] >= budget and m["theta steps"] >= 1
        assert 0 < m["exact E[R]"] <= imp["best possible E[R]"] + 1e-12
        assert sum(m["softmax(theta)"]) == pytest.approx(1.0)
    single, unrolled = methods
    assert imp["curves"]["single loop"]["exact_reward"][-1] == pytest.approx(
        single["exact E[R]"], rel=1e-5)  # the curve keeps 6 significant digits
    if imp["speed-up"] is not None:
        assert imp["speed-up"] == pytest.approx(
            unrolled["time (s)"] / imp["single loop time to reach (s)"])
        assert imp["target (unrolled final E[R])"] > imp["start exact E[R]"]

    # 3. spectral, Gaussian and the training data against the held-out digits
    spec = {r["model"]: r for r in data["spectral"]["rows"]}
    assert set(spec) == {"spectral score model", "Gaussian (mean + covariance)",
                         "training digits (noise floor)"}
    assert spec["spectral score model"]["fit (s)"] > 0

    for text in ("1/3 Categorical gradients", "2/3 Implicit Diffusion",
                 "3/3 Optimization-free diffusion", "| estimator", "gradient MSE"):
        assert text in stdout, text
    assert stdout.rstrip().splitlines()[-2:] == [f"Figure: {Path('out') / 'demo.png'}",
                                                 f"Every number: {Path('out') / 'demo.json'}"]
    assert "outputs in out/" in stderr


def test_demo_through_the_command_line(tmp_path):
    """`samplegrad demo --quick --out tmp` as a user types it, in a fresh process."""
    exe = Path(sys.executable).with_name("samplegrad")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "samplegrad_bench.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONDONTWRITEBYTECODE": "1"}
    before = _checkout_state()
    proc = subprocess.run([*cmd, "demo", "--quick", "--out", "tmp"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert _checkout_state() == before
    _check_outputs(tmp_path / "tmp")
    assert "Figure: tmp/demo.png" in proc.stdout
    assert "outputs in tmp/" in proc.stderr


def test_options_override_the_sizes():
    args = cli._build_parser(["demo"]).parse_args(
        ["demo", "--quick", "--steps", "7", "--draws", "9", "--budget", "0.25", "--power", "3"])
    cfg = demo._config(args)
    assert (cfg.steps, cfg.draws, cfg.budget_s, cfg.power) == (7, 9, 0.25, 3.0)
    assert cfg.pcs == _demo_parts.QUICK.pcs  # the rest stays quick
    full = demo._config(cli._build_parser(["demo"]).parse_args(["demo"]))
    assert full == _demo_parts.DemoConfig()


@pytest.mark.parametrize("argv", [["demo", "--budget", "0"], ["demo", "--budget", "-1"],
                                  ["demo", "--draws", "1"], ["demo", "--power", "nan"]])
def test_bad_sizes_are_usage_errors(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert argv[1] in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_estimator_families():
    assert _demo_parts.family("redge_cov") == "ReDGE"
    assert _demo_parts.family("rloo") == "classic"
    assert _demo_parts.family("peer_redge") == "peer package"


def test_mosaic_places_every_image_with_gutters():
    imgs = torch.arange(5 * 64, dtype=torch.float32).view(5, 64) / 320
    m = _demo_figure._mosaic(imgs, cols=3)
    assert m.shape == (2 * 9 + 1, 3 * 9 + 1)
    assert torch.equal(m[1:9, 1:9], imgs[0].view(8, 8))
    assert torch.equal(m[10:18, 10:18], imgs[4].view(8, 8))
    assert m[0].abs().sum() == 0 and m[:, 0].abs().sum() == 0  # gutters stay blank
    assert m[10:18, 19:27].abs().sum() == 0  # the sixth cell is empty
