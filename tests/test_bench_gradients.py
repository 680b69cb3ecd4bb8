"""Gradient-quality benchmark: exact problems, the bias/variance/MSE code, the draws."""

import itertools
import json
import math
from dataclasses import asdict

import pytest
import torch

from samplegrad_bench._common import write_json
from samplegrad_bench._merge import MergeError
from samplegrad_bench.cli import main
from samplegrad_bench.runners.gradients import (
    _NEW_SETTINGS,
    QUICK,
    budget_mse,
    draw_estimates,
    gradient_stats,
    knob_grid,
    merge_results,
)
from samplegrad_bench.tasks.gradient_problems import PROBLEMS, get_problem, mlp, quadratic


def _enumerated_expectation(f, logits):
    """E[f] as an explicit, differentiable sum over all configurations (independent of
    samplegrad.exact)."""
    n_vars, k = logits.shape
    logp = torch.log_softmax(logits, -1)
    total = 0.0
    for cfg in itertools.product(range(k), repeat=n_vars):
        idx = torch.tensor(cfg)
        onehot = torch.nn.functional.one_hot(idx, k).to(logits.dtype)
        total = total + logp[torch.arange(n_vars), idx].sum().exp() * f(onehot[None])[0]
    return total


@pytest.mark.parametrize("problem", [quadratic(3, 3, seed=1), mlp(3, 3, seed=2),
                                     mlp(5, 2, hidden=8, seed=3)], ids=lambda p: p.name)
def test_exact_gradient_matches_autograd_enumeration(problem):
    value, grad = problem.exact()
    leaf = problem.logits.clone().requires_grad_()
    want = _enumerated_expectation(problem.f, leaf)
    want.backward()
    torch.testing.assert_close(value, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-4, atol=1e-6)


def test_exact_gradient_matches_finite_differences():
    problem = quadratic(3, 3, seed=4)
    _, grad = problem.exact()
    logits = problem.logits.double()
    f = lambda x: problem.f(x.float()).double()  # noqa: E731
    eps, fd = 1e-4, torch.zeros_like(logits)
    for i, j in itertools.product(range(3), range(3)):
        d = torch.zeros_like(logits)
        d[i, j] = eps
        fd[i, j] = (_enumerated_expectation(f, logits + d)
                    - _enumerated_expectation(f, logits - d)) / (2 * eps)
    torch.testing.assert_close(grad.double(), fd, rtol=1e-3, atol=1e-4)


def test_problems_are_deterministic_and_named():
    for name in PROBLEMS:
        a, b = get_problem(name), get_problem(name)
        assert a.name == name and torch.equal(a.logits, b.logits)
        x = torch.nn.functional.one_hot(torch.zeros(2, a.n_vars, dtype=torch.long),
                                        a.n_classes).float()
        assert torch.equal(a.f(x), b.f(x)) and a.f(x).shape == (2,)
    with pytest.raises(ValueError, match="problem"):
        get_problem("nope")
    with pytest.raises(ValueError, match="n_classes"):
        quadratic(3, 1)


def test_stats_known_answer_unbiased_gaussian_noise():
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(4, 5, generator=gen)
    n, sigma = 20000, 0.3
    est = truth + sigma * torch.randn(n, 4, 5, generator=gen)
    s = gradient_stats(est, truth)
    var = sigma**2 * 20
    # sample variance of a sum of 20 chi-square(n-1)/(n-1) terms: sd = var * sqrt(2/(20 n))
    assert s["variance"] == pytest.approx(var, abs=5 * var * math.sqrt(2 / (20 * n)))
    # debiased bias^2 of an unbiased estimator: mean 0, sd = sigma^2 sqrt(2*20)/n
    assert abs(s["bias2"]) < 5 * sigma**2 * math.sqrt(40) / n
    assert s["mse"] == pytest.approx(s["variance"] * (n - 1) / n + s["bias2"]
                                     + s["bias2_noise"], rel=1e-6)
    assert s["rel_mse"] == pytest.approx(s["mse"] / float((truth**2).sum()))


def test_stats_known_answer_constant_bias():
    truth = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    shift = torch.tensor([[0.1, 0.0], [0.0, -0.2]])
    est = (truth + shift).expand(10, 2, 2)
    s = gradient_stats(est, truth)
    assert s["variance"] == pytest.approx(0.0, abs=1e-12)
    assert s["bias2"] == pytest.approx(0.05) and s["mse"] == pytest.approx(0.05)
    cos = float((truth + shift).flatten() @ truth.flatten()
                / ((truth + shift).norm() * truth.norm()))
    assert s["cosine"] == pytest.approx(cos)
    with pytest.raises(ValueError, match="estimates"):
        gradient_stats(est[:1], truth)


def _bias_bound(s, n):
    """5 sd of the debiased bias^2 of an unbiased estimator: sd <= sqrt(2) * variance / n."""
    return 5 * math.sqrt(2) * s["variance"] / n


def test_rloo_is_unbiased_and_straight_through_is_not():
    problem = get_problem("mlp_L4_K5")
    _, truth = problem.exact()
    n = 300
    torch.manual_seed(1)
    s = gradient_stats(draw_estimates(problem.f, problem.logits, "rloo", n, 2), truth)
    assert abs(s["bias2"]) < _bias_bound(s, n)
    torch.manual_seed(2)
    st = gradient_stats(draw_estimates(problem.f, problem.logits, "straight_through", 4000),
                        truth)
    assert st["bias2"] > 10 * _bias_bound(st, 4000)


def test_vectorized_draws_match_single_calls():
    """Batched pathwise draws estimate the same mean as one `estimate` call per draw."""
    from samplegrad_bench.estimators import estimate

    problem = quadratic(3, 3, seed=5)
    torch.manual_seed(3)
    vec = draw_estimates(problem.f, problem.logits, "redge", 2000, 1, n_steps=3, t1=0.5)
    loop = []
    for _ in range(200):
        leaf = problem.logits.clone().requires_grad_()
        estimate(problem.f, leaf, "redge", 1, n_steps=3, t1=0.5).backward()
        loop.append(leaf.grad)
    loop = torch.stack(loop)
    diff2 = float(((vec.mean(0) - loop.mean(0)) ** 2).sum())
    expected = float(vec.var(0).sum()) / 2000 + float(loop.var(0).sum()) / 200
    assert diff2 < 5 * expected  # E[diff2] = expected under equal means
    # n_samples averages: 4-sample estimates have about a quarter of the variance
    v4 = draw_estimates(problem.f, problem.logits, "redge", 2000, 4, n_steps=3, t1=0.5)
    assert float(v4.var(0).sum()) == pytest.approx(float(vec.var(0).sum()) / 4, rel=0.15)


def test_budget_and_grid():
    assert budget_mse(0.01, 0.4, seconds=1e-3, budget_s=4e-3) == pytest.approx(0.11)
    assert budget_mse(-1e-4, 0.4, seconds=1e-3, budget_s=4e-3) == pytest.approx(0.1)
    assert math.isnan(budget_mse(0.0, 1.0, seconds=2.0, budget_s=1.0))
    assert knob_grid("reinforce", QUICK, 0.5) == [{"baseline": None}, {"baseline": 0.5}]
    assert len(knob_grid("redge", QUICK)) == len(QUICK.t1) * len(QUICK.n_steps)
    with pytest.raises(ValueError, match="n_draws"):
        draw_estimates(lambda x: x.sum((-2, -1)), torch.zeros(2, 2), "redge", 0)


def _grad_row(problem, name, mse, n=1):
    return {"problem": problem, "estimator": name, "knobs": "-", "n_samples": n, "bias2": 0.0,
            "bias2_noise": 0.0, "variance": mse, "mse": mse, "rel_mse": mse, "cosine": 0.5,
            "us": 100.0, "mse@10ms": mse / 100, "mse@1000ms": mse / 1e4}


def _grad_results(names, mse, **config):
    cfg = {**asdict(QUICK), **config}
    return {"config": cfg, "seed": 0, "rows": [_grad_row("mlp_L4_K5", n, mse) for n in names],
            "best": {}, "run_info": {"started": "then", "load_start": [1.0, 1.0, 1.0]}}


def test_merge_replaces_the_runs_estimators_and_records_provenance(tmp_path, capsys):
    base = _grad_results(["redge", "rloo"], 1.0)
    for k in _NEW_SETTINGS:  # published before these settings existed
        base["config"].pop(k)
    run = _grad_results(["rloo", "gst"], 0.5)
    merged = merge_results(base, run, "elsewhere")
    assert [r["estimator"] for r in merged["rows"]] == ["redge", "rloo", "gst"]
    assert [r["mse"] for r in merged["rows"]] == [1.0, 0.5, 0.5]  # rloo: the run's row
    assert {r["estimator"] for r in merged["best"]["mlp_L4_K5"]} == {"redge", "rloo", "gst"}
    prov = merged["provenance"]
    assert prov[0]["methods"] == ["redge"] and prov[1]["methods"] == ["rloo", "gst"]
    assert prov[1]["started"] == "then" and "elsewhere" in prov[1]["source"]
    # through the command line: the output folder's results take the run's rows; a budget
    # no draw fits (nan, stored as a string by write_json) is read back as nan
    base["rows"][0]["mse@10ms"] = math.nan
    write_json(tmp_path / "out" / "gradients_quick.json", base)
    write_json(tmp_path / "run" / "gradients_quick.json", run)
    assert main(["bench", "gradients", "--quick", "--out", str(tmp_path / "out"),
                 "--merge-from", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "out" / "gradients_quick.json").read_text())
    assert [r["estimator"] for r in data["rows"]] == ["redge", "rloo", "gst"]
    assert data["rows"][0]["mse@10ms"] == "nan"
    assert (tmp_path / "out" / "gradients_quick.png").stat().st_size > 1000
    assert "| gst" in capsys.readouterr().out


def test_merge_of_runs_on_different_problems_keeps_both():
    def results(names, mse, problem):
        out = _grad_results(names, mse)
        out["rows"] = [_grad_row(problem, n, mse) for n in names]
        return out

    base = results(["redge"], 1.0, "mlp_L4_K5")
    base["rows"] += [_grad_row("mlp_L10_K2", "redge", 1.0)]
    base["config"]["problems"] = ["mlp_L4_K5", "mlp_L10_K2"]
    first = merge_results(base, results(["gst"], 0.5, "mlp_L4_K5"), "a")
    both = merge_results(first, results(["gst", "disarm"], 0.25, "mlp_L10_K2"), "b")
    assert sorted((r["problem"], r["estimator"], r["mse"]) for r in both["rows"]) == [
        ("mlp_L10_K2", "disarm", 0.25), ("mlp_L10_K2", "gst", 0.25),
        ("mlp_L10_K2", "redge", 1.0), ("mlp_L4_K5", "gst", 0.5), ("mlp_L4_K5", "redge", 1.0)]
    assert [(p["methods"], p.get("problems")) for p in both["provenance"]] == [
        (["redge"], None), (["gst"], ["mlp_L4_K5"]), (["gst", "disarm"], ["mlp_L10_K2"])]
    with pytest.raises(MergeError, match="problems"):
        merge_results(first, results(["gst"], 0.5, "quadratic_L4_K5")
                      | {"config": {**first["config"], "problems": ["quadratic_L4_K5"]}}, "c")


def test_merge_refuses_different_configs(tmp_path, capsys):
    base = _grad_results(["redge"], 1.0)
    with pytest.raises(MergeError, match="n_draws"):
        merge_results(base, _grad_results(["gst"], 1.0, n_draws=7), "x")
    with pytest.raises(MergeError, match="seed"):
        merge_results(base, {**_grad_results(["gst"], 1.0), "seed": 3}, "x")
    for d in ("out", "run"):
        (tmp_path / d).mkdir()
    (tmp_path / "out" / "gradients_quick.json").write_text(json.dumps(base))
    (tmp_path / "run" / "gradients_quick.json").write_text(
        json.dumps(_grad_results(["gst"], 1.0, t1=[0.9])))
    with pytest.raises(SystemExit) as e:  # a usage error, the base results untouched
        main(["bench", "gradients", "--quick", "--out", str(tmp_path / "out"),
              "--merge-from", str(tmp_path / "run")])
    assert e.value.code == 2 and "t1" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "gradients_quick.json").read_text()) == json.loads(
        json.dumps(base))
