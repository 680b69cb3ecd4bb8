"""`samplegrad bench gradients`: gradient quality of every estimator against the truth.

On small problems where enumeration gives the exact gradient ``g``
(:mod:`samplegrad_bench.tasks.gradient_problems`), each estimator and each setting of its knobs
(``t1``, ``n_steps``; ``tau``; ``n_samples``; REINFORCE's baseline) is drawn ``n_draws``
independent times, and we report

- bias²: ``||mean_i g_i - g||² - variance / n_draws`` (the Monte Carlo noise of the mean
  subtracted, so an unbiased estimator scores 0 up to noise; it can be slightly negative),
- variance: ``mean_i ||g_i - mean g||²`` (trace of the covariance, ``n_draws - 1`` divisor),
- MSE: ``mean_i ||g_i - g||²``, its ratio to ``||g||²``, and the mean cosine ``cos(g_i, g)``,
- cost: median wall time of one ``estimate(...).backward()`` call (1 thread),
- MSE at an equal wall-clock budget ``B``: the mean of ``m = floor(B / cost)`` independent
  estimates has MSE ``max(bias², 0) + variance / m`` (exact for independent draws).

Draws are vectorized: pathwise estimators run on a batch of independent copies of the
logits (one leaf row per draw, so each row's gradient is one single-sample estimate; an
``n_samples`` estimate is the mean of ``n_samples`` of them, exactly as ``surrogate``
computes it). Score-function estimators (REINFORCE, RLOO) couple their samples through the
joint log-probability, so their draws call ``estimate`` once each.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

import samplegrad as sg
from samplegrad_bench._args import comma_list, int_at_least
from samplegrad_bench._common import (
    markdown_table,
    progress,
    pyplot,
    save_figure,
    seed_all,
    write_json,
)
from samplegrad_bench._merge import (
    MergeError,
    add_merge_argument,
    check_same,
    finish_info,
    provenance,
    read_pair,
    run_info,
)
from samplegrad_bench.estimators import (
    bench_methods,
    estimate,
    fit_n_samples,
    is_score_function,
    sampler,
    unsupported,
    with_state,
)
from samplegrad_bench.tasks.gradient_problems import (
    PROBLEMS,
    GradientProblem,
    Objective,
    get_problem,
)

_REDGE_LIKE = ("redge", "redge_cov", "redge_max", "redge_exact", "peer_redge")


@dataclass(frozen=True)
class GradientsConfig:
    """Settings of the benchmark (printed with each result)."""

    problems: tuple[str, ...] = tuple(PROBLEMS)
    n_draws: int = 4000
    n_samples: tuple[int, ...] = (1, 4, 16)
    t1: tuple[float, ...] = (0.1, 0.3, 0.5, 0.8)
    n_steps: tuple[int, ...] = (3, 5, 9)
    tau_gumbel: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0, 2.0)
    tau_reinmax: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    n_rao: tuple[int, ...] = (10, 100)  # Gumbel-Rao's conditional noise draws
    tau_rebar: tuple[float, ...] = (0.5, 1.0)  # REBAR and RELAX (eta=1, learned by RELAX)
    relax_warmup: int = 300  # RELAX: control-variate training steps before the draws
    budgets_ms: tuple[float, ...] = (10.0, 1000.0)
    timing_rounds: int = 5  # timing passes over all settings (min over passes and reps)
    timing_reps: int = 3


QUICK = GradientsConfig(problems=("mlp_L4_K5",), n_draws=500, n_samples=(1, 4), t1=(0.3, 0.8),
                        n_steps=(3, 5), tau_gumbel=(0.3, 1.0), tau_reinmax=(1.0, 2.0),
                        n_rao=(10,), tau_rebar=(0.5,), relax_warmup=20, timing_rounds=2)


def knob_grid(name: str, cfg: GradientsConfig, value: float = 0.0) -> list[dict[str, Any]]:
    """Knob settings for ``name``; REINFORCE: no baseline, or the exact mean ``value``."""
    if name in _REDGE_LIKE:
        return [{"n_steps": s, "t1": t} for s in cfg.n_steps for t in cfg.t1]
    if name in ("gumbel_soft", "gumbel_hard"):
        return [{"tau": t} for t in cfg.tau_gumbel]
    if name == "reinmax":
        return [{"tau": t} for t in cfg.tau_reinmax]
    if name == "gumbel_rao":
        return [{"tau": t, "n_rao": r} for t in cfg.tau_gumbel for r in cfg.n_rao]
    if name == "gst":
        return [{"tau": t} for t in cfg.tau_gumbel]
    if name in ("rebar", "relax"):
        return [{"tau": t} for t in cfg.tau_rebar]
    if name == "reinforce":
        return [{"baseline": None}, {"baseline": float(value)}]
    return [{}]


def stateful_knobs(f: Objective, logits: torch.Tensor, name: str, n_samples: int,
                   warmup: int, knobs: dict[str, Any]) -> dict[str, Any]:
    """``knobs`` with a fresh per-run state where the estimator keeps one (RELAX's control
    variate), first trained for ``warmup`` steps on this problem; the draws keep training
    it (its cost is part of the estimator's)."""
    knobs = with_state(name, knobs)
    state = knobs.get("control")
    if isinstance(state, sg.RelaxState):
        for _ in range(warmup):
            leaf = logits.detach().clone().requires_grad_()
            sg.relax_step(state, f, leaf, n_samples, tau=knobs.get("tau", 0.5))
    return knobs


def draw_estimates(f: Objective, logits: torch.Tensor, name: str, n_draws: int,
                   n_samples: int = 1, warmup: int = 0, **knobs: Any) -> torch.Tensor:
    """``n_draws`` independent ``n_samples``-sample gradient estimates ``(n_draws, *logits.shape)``
    of ``d E[f] / d logits`` by estimator ``name`` (see the module docstring). ``warmup``:
    training steps of a learned control variate (RELAX) before the draws."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    base = logits.detach()
    knobs = stateful_knobs(f, base, name, n_samples, warmup, knobs)
    if is_score_function(name):
        out = torch.empty(n_draws, *base.shape, dtype=base.dtype)
        for i in range(n_draws):
            leaf = base.clone().requires_grad_()
            estimate(f, leaf, name, n_samples, **knobs).backward()
            out[i] = leaf.grad
        return out
    leaf = base.expand(n_draws * n_samples, *base.shape).clone().requires_grad_()
    fx = f(sampler(name, **knobs)(leaf))
    if fx.shape != (n_draws * n_samples,):
        raise ValueError(f"f must return one value per sample; got {tuple(fx.shape)}")
    fx.sum().backward()
    return leaf.grad.reshape(n_draws, n_samples, *base.shape).mean(1)


def gradient_stats(estimates: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """bias², variance, MSE, relative MSE and mean cosine of ``estimates (N, *shape)`` against
    the exact gradient ``truth (*shape)`` (definitions in the module docstring)."""
    if estimates.dim() < 1 or estimates.shape[1:] != truth.shape:
        raise ValueError(f"estimates must be shaped (N, *{tuple(truth.shape)}), got "
                         f"{tuple(estimates.shape)}")
    n = estimates.shape[0]
    if n < 2:
        raise ValueError(f"estimates needs at least 2 draws, got {n}")
    e = estimates.double().flatten(1)
    g = truth.double().flatten()
    mean = e.mean(0)
    variance = float(((e - mean) ** 2).sum(1).sum() / (n - 1))
    bias2 = float(((mean - g) ** 2).sum()) - variance / n
    mse = float(((e - g) ** 2).sum(1).mean())
    cos = (e @ g) / (e.norm(dim=1) * g.norm()).clamp_min(1e-30)
    g2 = float((g**2).sum())
    return {"bias2": bias2, "bias2_noise": variance / n, "variance": variance, "mse": mse,
            "rel_mse": mse / g2 if g2 > 0 else math.inf, "cosine": float(cos.mean())}


def time_estimate(f: Objective, logits: torch.Tensor, name: str, n_samples: int = 1,
                  reps: int = 15, **knobs: Any) -> float:
    """Fastest of ``reps`` timed ``estimate(f, logits, name, n_samples).backward()`` calls, in
    seconds (the minimum is the least disturbed by other processes on a shared machine)."""
    knobs = with_state(name, knobs)  # RELAX: its control variate's training step is timed
    times = []
    for i in range(reps + 2):
        leaf = logits.detach().clone().requires_grad_()
        t0 = time.perf_counter()
        estimate(f, leaf, name, n_samples, **knobs).backward()
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - t0)
    return min(times)


def budget_mse(bias2: float, variance: float, seconds: float, budget_s: float) -> float:
    """MSE of the mean of ``floor(budget_s / seconds)`` independent draws (nan if none fits)."""
    m = math.floor(budget_s / seconds)
    return max(bias2, 0.0) + variance / m if m >= 1 else math.nan


def knob_str(knobs: dict[str, Any]) -> str:
    parts = []
    for k, v in knobs.items():
        if k == "baseline":
            parts.append("baseline=" + ("none" if v is None else "E[f]"))
        else:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts) or "-"


def evaluate_problem(problem: GradientProblem, names: list[str], cfg: GradientsConfig,
                     seed: int = 0, bar=None) -> list[dict[str, Any]]:
    """One row per (estimator, knobs, n_samples) setting on ``problem``."""
    value, truth = problem.exact()
    k = problem.logits.shape[-1]
    for name in names:  # e.g. ARM/DisARM on K > 2 classes
        if unsupported(name, fit_n_samples(name, 1), k):
            print(f"skipped {unsupported(name, fit_n_samples(name, 1), k)}")
    names = [n for n in names if not unsupported(n, fit_n_samples(n, 1), k)]
    settings = [(name, knobs, fit_n_samples(name, n)) for name in names
                for knobs in knob_grid(name, cfg, float(value)) for n in cfg.n_samples]
    rows = []
    for name, knobs, n in settings:
        seed_all(seed)
        est = draw_estimates(problem.f, problem.logits, name, cfg.n_draws, n,
                             cfg.relax_warmup, **knobs)
        rows.append({"problem": problem.name, "estimator": name, "knobs": knob_str(knobs),
                     "n_samples": n, **gradient_stats(est, truth)})
        if bar is not None:
            bar.update()
    # timing in round-robin passes, so that a burst of load on a shared machine hits every
    # setting alike; the cost is the fastest call over all passes
    secs = [math.inf] * len(settings)
    for _ in range(cfg.timing_rounds):
        for i, (name, knobs, n) in enumerate(settings):
            t = time_estimate(problem.f, problem.logits, name, n, cfg.timing_reps, **knobs)
            secs[i] = min(secs[i], t)
    for row, sec in zip(rows, secs):
        row["us"] = sec * 1e6
        for b in cfg.budgets_ms:
            row[f"mse@{b:g}ms"] = budget_mse(row["bias2"], row["variance"], sec, b / 1e3)
    return rows


def best_rows(rows: list[dict[str, Any]], cfg: GradientsConfig) -> list[dict[str, Any]]:
    """Per estimator: its lowest-MSE setting at its smallest ``n_samples``, plus the lowest
    equal-budget MSE over all its settings (any ``n_samples``)."""
    out = []
    for name in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == name]
        n0 = min(r["n_samples"] for r in mine)
        b = min((r for r in mine if r["n_samples"] == n0), key=lambda r: r["mse"])
        row = {"estimator": name, "knobs": b["knobs"], "n": n0, "bias²": b["bias2"],
               "variance": b["variance"], "MSE": b["mse"], "MSE/‖g‖²": b["rel_mse"],
               "cosine": b["cosine"], "µs/estimate": b["us"]}
        for budget in cfg.budgets_ms:
            key = f"mse@{budget:g}ms"
            fits = [r for r in mine if not math.isnan(r[key])]
            if fits:
                bb = min(fits, key=lambda r: r[key])
                row[f"MSE @ {budget:g} ms"] = bb[key]
                row[f"setting @ {budget:g} ms"] = f"{bb['knobs']}, n={bb['n_samples']}"
            else:
                row[f"MSE @ {budget:g} ms"] = math.nan
                row[f"setting @ {budget:g} ms"] = "(one draw costs more)"
        out.append(row)
    return sorted(out, key=lambda r: r["MSE"])


def caption(problem: GradientProblem, cfg: GradientsConfig) -> str:
    _, g = problem.exact()
    return (f"{problem.description}; ‖g‖² = {float((g**2).sum()):.4g}. {cfg.n_draws} independent "
            f"draws per setting; knobs: t1 ∈ {list(cfg.t1)}, n_steps ∈ {list(cfg.n_steps)}, "
            f"Gumbel tau ∈ {list(cfg.tau_gumbel)} (also Gumbel-Rao, n_rao ∈ {list(cfg.n_rao)}, "
            f"and GST), ReinMax tau ∈ {list(cfg.tau_reinmax)}, REBAR/RELAX tau ∈ "
            f"{list(cfg.tau_rebar)} (RELAX: {cfg.relax_warmup} control-variate training steps "
            f"first), "
            f"REINFORCE baseline ∈ {{none, exact E[f]}}; n_samples ∈ {list(cfg.n_samples)} "
            f"(RLOO ≥ 2). Columns n..µs: the lowest-MSE knob at the smallest n; "
            f"'MSE @ B': the best setting (any knob and n) when the mean of floor(B/cost) "
            f"draws is taken; cost = fastest of {cfg.timing_rounds * cfg.timing_reps} "
            f"fwd+bwd calls in {cfg.timing_rounds} round-robin passes, 1 thread.")


def plot(rows: list[dict[str, Any]], problems: list[str], path: Path) -> None:
    """MSE/‖g‖² against the cost of one estimate, every setting, one panel per problem."""
    plt = pyplot()

    names = list(dict.fromkeys(r["estimator"] for r in rows))
    cmap = plt.get_cmap("tab20")
    markers = {1: "o", 2: "o", 4: "s", 16: "^"}
    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.8), squeeze=False)
    for ax, prob in zip(axes[0], problems):
        for i, name in enumerate(names):
            mine = [r for r in rows if r["problem"] == prob and r["estimator"] == name]
            for n in sorted({r["n_samples"] for r in mine}):
                pts = [r for r in mine if r["n_samples"] == n]
                ax.scatter([r["us"] for r in pts], [r["rel_mse"] for r in pts], s=14,
                           color=cmap(i % 20), marker=markers.get(n, "x"), alpha=0.8,
                           label=name if n == min(r["n_samples"] for r in mine) else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(top=100.0)  # a few unstable settings (small t1, cov) reach 1e5
        ax.set_title(f"{prob} (MSE/‖g‖² > 100 clipped)")
        ax.set_xlabel("µs per estimate (fwd+bwd, 1 thread)")
        ax.set_ylabel("MSE / ‖g‖²")
    axes[0][-1].legend(fontsize=7, loc="best", title="o n=1(2) □ n=4 △ n=16", title_fontsize=7)
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--problems", type=comma_list(choices=PROBLEMS), default=None,
                   metavar="NAME,...", help="comma list of " + ",".join(PROBLEMS))
    p.add_argument("--n-draws", type=int_at_least(2), default=None,
                   help="independent gradient estimates per setting")
    p.add_argument("--methods", type=comma_list(choices=bench_methods()), default=None,
                   metavar="NAME,...", help="comma list of estimators (default: all)")
    add_merge_argument(p)


# settings added after some results were published; only the estimators that read them
# (Gumbel-Rao, REBAR, RELAX) depend on them, so results without them can take merged rows
_NEW_SETTINGS = ("n_rao", "tau_rebar", "relax_warmup")


def merge_results(base: dict[str, Any], run: dict[str, Any], run_dir: str | Path
                  ) -> dict[str, Any]:
    """``base`` with the rows of ``run``'s (problem, estimator) pairs replaced by ``run``'s
    (the best-setting tables recomputed); refused (``MergeError``) unless the configs and
    seeds agree (``run`` may cover fewer problems: rows of different problems are
    independent, every problem and setting being seeded alone)."""
    check_same({k: v for k, v in base["config"].items() if k != "problems"},
               {k: v for k, v in run["config"].items() if k != "problems"}, "configs",
               only_new=_NEW_SETTINGS)
    check_same({"seed": base.get("seed")}, {"seed": run.get("seed")}, "seeds")
    extra = [p for p in run["config"]["problems"] if p not in base["config"]["problems"]]
    if extra:
        raise MergeError(f"--merge-from: the run has problems the base results do not: {extra}")
    cfg = GradientsConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in {**run["config"],
                                          "problems": base["config"]["problems"]}.items()})
    pairs = {(r["problem"], r["estimator"]) for r in run["rows"]}
    rows = [r for r in base["rows"] if (r["problem"], r["estimator"]) not in pairs]
    rows += run["rows"]
    new = list(dict.fromkeys(r["estimator"] for r in run["rows"]))
    old = list(dict.fromkeys(r["estimator"] for r in base["rows"]))
    kept = {r["estimator"] for r in rows if (r["problem"], r["estimator"]) not in pairs}
    problems = [p for p in cfg.problems if any(r["problem"] == p for r in rows)]
    best = {p: best_rows([r for r in rows if r["problem"] == p], cfg) for p in problems}
    done = list(dict.fromkeys(r["problem"] for r in run["rows"]))
    return {"config": asdict(cfg), "seed": run.get("seed"), "rows": rows, "best": best,
            "provenance": provenance(base, old, run, new, run_dir,
                                     replaced=[m for m in new if m not in kept],
                                     problems=done)}


def _merge(args: argparse.Namespace, stem: str) -> dict[str, Any]:
    base, new = read_pair(args.out, args.merge_from, f"{stem}.json")
    result = merge_results(base, new, args.merge_from)
    cfg = GradientsConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in result["config"].items()})
    write_json(args.out / f"{stem}.json", result)
    problems = list(result["best"])
    for name in problems:
        prob = get_problem(name, seed=result["seed"] or 0)
        print(f"**{name}.** {caption(prob, cfg)}\n\n{markdown_table(result['best'][name])}\n")
    for p in result["provenance"]:
        print(f"{', '.join(p['methods'])}: {p['source']} ({p.get('started', '?')} to "
              f"{p.get('finished', '?')}, load {p.get('load_start', '?')} -> "
              f"{p.get('load_end', '?')})")
    plot(result["rows"], problems, args.out / f"{stem}.png")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not getattr(args, "threads", None):
        torch.set_num_threads(1)
    if getattr(args, "merge_from", None) is not None:
        return _merge(args, "gradients_quick" if args.quick else "gradients")
    cfg = QUICK if args.quick else GradientsConfig()
    if args.problems:
        cfg = replace(cfg, problems=tuple(args.problems))
    if args.n_draws:
        cfg = replace(cfg, n_draws=args.n_draws)
    names = args.methods or bench_methods()
    print(f"config: {cfg}")
    out = args.out
    stem = "gradients_quick" if args.quick else "gradients"
    problems = [get_problem(p, seed=args.seed) for p in cfg.problems]
    total = sum(len(knob_grid(n, cfg)) for n in names) * len(cfg.n_samples) * len(problems)
    bar = progress(desc="gradients", total=total, disable=None)
    result: dict[str, Any] = {"config": asdict(cfg), "seed": args.seed, "rows": [],
                              "best": {}, "run_info": run_info()}
    text = []
    for prob in problems:
        rows = evaluate_problem(prob, names, cfg, seed=args.seed, bar=bar)
        best = best_rows(rows, cfg)
        result["rows"] += rows
        result["best"][prob.name] = best
        write_json(out / f"{stem}.json", result)  # after each problem: nothing lost
        text.append(f"**{prob.name}.** {caption(prob, cfg)}\n\n{markdown_table(best)}")
    bar.close()
    finish_info(result["run_info"])
    write_json(out / f"{stem}.json", result)
    print()
    print("\n\n".join(text))
    plot(result["rows"], [p.name for p in problems], out / f"{stem}.png")
    return result
