"""Polynomial programming: the loss, its exact expectation (vs enumeration), the optimizer."""

import json
from dataclasses import asdict

import pytest
import torch

import samplegrad as sg
from samplegrad_bench._merge import MergeError
from samplegrad_bench.cli import main
from samplegrad_bench.runners.polyprog import QUICK, knob_grid, merge_results, optimize
from samplegrad_bench.tasks import polyprog as task


def _onehot(bits: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(bits.long(), 2).float()


@pytest.mark.parametrize("power", [1.5, 2.0, 3.0])
def test_loss_values_and_shapes(power):
    x = _onehot(torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0]]))  # (3, L=3, 2)
    out = task.loss(x, power)
    want = torch.tensor([0.45**power, 0.55**power, (0.55**power + 2 * 0.45**power) / 3])
    assert out.shape == (3,)
    torch.testing.assert_close(out, want)
    assert task.loss(x.expand(4, 3, 3, 2), power).shape == (4, 3)


@pytest.mark.parametrize("power", [1.5, 2.0, 3.0])
def test_expected_loss_matches_enumeration(power):
    logits = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    value, grad = sg.exact(lambda x: task.loss(x, power), logits)
    leaf = logits.clone().requires_grad_()
    mine = task.expected_loss(leaf, power)
    mine.backward()
    torch.testing.assert_close(mine.detach(), value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(leaf.grad, grad, rtol=1e-8, atol=1e-12)


def test_optimum_is_the_infimum():
    for power in (1.5, 2.0, 3.0):
        near = torch.tensor([[30.0, -30.0]] * 4)  # every x_d = 0 almost surely
        assert task.expected_loss(near, power).item() == pytest.approx(task.optimum(power))
        rand = torch.randn(100, 4, 2)
        assert bool((task.expected_loss(rand, power) >= task.optimum(power)).all())
    assert task.optimum(2.0, target=0.7) == pytest.approx(0.3**2)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="logits"):
        task.expected_loss(torch.zeros(4, 3), 2.0)
    with pytest.raises(ValueError, match="power"):
        task.loss(torch.zeros(2, 4, 2), 0.0)
    with pytest.raises(ValueError, match="power"):
        task.optimum(-1.0)


def test_optimize_reduces_the_exact_loss_and_is_seeded():
    kw = {"n_vars": 16, "batch": 16, "steps": 40, "log_every": 10}
    a = optimize("rloo", {}, 2.0, seed=0, **kw)
    b = optimize("rloo", {}, 2.0, seed=0, **kw)
    assert a["curve"] == b["curve"]  # same seed, same run
    assert a["curve_steps"] == [0, 10, 20, 30, 40]
    # 40 Adam steps of lr 0.05 move every logit by up to 2: the loss must drop clearly
    assert a["final"] < a["curve"][0] - 0.01
    assert a["gap"] == pytest.approx(a["final"] - 0.45**2)


def test_reinforce_ema_baseline_runs_and_is_recorded():
    r = optimize("reinforce", {"ema": 0.9}, 2.0, seed=1, n_vars=8, batch=8, steps=20)
    assert r["knobs"] == {"ema": 0.9} and r["final"] < r["curve"][0]
    assert knob_grid("reinforce") == [{"ema": 0.9}, {"ema": 0.99}]
    assert knob_grid("straight_through") == [{}]


def _poly_results(names, final, p=2.0, **config):
    cfg = {**asdict(QUICK), **config}
    runs = [{"estimator": n, "knobs": {}, "power": p, "seed": s, "final": final, "gap": 0.1,
             "seconds": 1.0, "curve_steps": [0, 100], "curve": [0.4, final]}
            for n in names for s in cfg["seeds"]]
    rows = [{"p": p, "estimator": n, "knobs": "-", "final E[loss]": final, "std": 0.0,
             "gap to optimum": 0.1, "s/run": 1.0} for n in names]
    sweep = [{"estimator": n, "knobs": {}, "power": p, "final": final} for n in names]
    return {"config": cfg, "sweep": sweep, "runs": runs, "rows": rows,
            "run_info": {"started": "then", "load_start": [2.0, 2.0, 2.0]}}


def test_merge_replaces_the_runs_estimators_and_refuses_other_configs(tmp_path, capsys):
    base, run = _poly_results(["redge", "rloo"], 0.3), _poly_results(["rloo", "disarm"], 0.25)
    merged = merge_results(base, run, "elsewhere")
    assert [(r["estimator"], r["final E[loss]"]) for r in merged["rows"]] == [
        ("redge", 0.3), ("rloo", 0.25), ("disarm", 0.25)]
    assert [r["estimator"] for r in merged["sweep"]] == ["redge", "rloo", "disarm"]
    assert len(merged["runs"]) == 3 * len(QUICK.seeds)
    assert [p["methods"] for p in merged["provenance"]] == [["redge"], ["rloo", "disarm"]]
    assert merged["provenance"][1]["load_start"] == [2.0, 2.0, 2.0]
    with pytest.raises(MergeError, match="steps"):
        merge_results(base, _poly_results(["disarm"], 0.2, steps=7), "x")
    for d, res in (("out", base), ("run", run)):
        (tmp_path / d).mkdir()
        (tmp_path / d / "polyprog_quick.json").write_text(json.dumps(res))
    assert main(["bench", "polyprog", "--quick", "--out", str(tmp_path / "out"),
                 "--merge-from", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "out" / "polyprog_quick.json").read_text())
    assert [r["estimator"] for r in data["rows"]] == ["redge", "rloo", "disarm"]
    assert (tmp_path / "out" / "polyprog_quick.png").stat().st_size > 1000
    assert "| disarm" in capsys.readouterr().out
