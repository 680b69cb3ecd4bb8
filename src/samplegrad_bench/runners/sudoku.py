"""`samplegrad bench sudoku`: Sudoku without a prior, every gradient estimator.

Each puzzle gets free logits ``(81, 9)`` (clue cells clamped: every other digit is −inf), and
Adam minimizes ``E[penalty(x)]``, ``x ~ Cat(softmax(logits))`` (Σ over rows, columns, boxes
and digits of (count − 1)²). All puzzles (every difficulty) are optimized at once as one
batch ``(P, 81, 9)``; pathwise estimators get ``f = Σ_p penalty_p`` (its gradient w.r.t.
puzzle p's logits depends on puzzle p's sample only). Score-function estimators (REINFORCE
with a per-puzzle EMA baseline, RLOO) are called once per puzzle by default, so each puzzle's
gradient is not drowned in the other puzzles' noise (``--sf-joint`` feeds them the sum too).

Headline metric: fraction of puzzles whose argmax grid is a valid solution agreeing with the
clues, at several step budgets. Also reported: mean violations of the argmax grid and the
probability that one sampled grid solves the puzzle (mean over draws).

Commands (results under ``runs/sudoku/``; ``--publish``: ``docs/results/sudoku/``)::

    samplegrad bench sudoku --sweep --threads 1   # knob sweep on a disjoint set -> sweep.json
    samplegrad bench sudoku --tuned --threads 1   # 3 x 34 puzzles, 1000 steps -> sudoku.json
    samplegrad bench sudoku --quick               # 3 x 4 puzzles, 100 steps -> sudoku_quick.json

The JSON is rewritten after every estimator; a rerun with the same settings keeps the
estimators already in it (an interrupted run resumes and writes the same files, timings
aside; a run of other ``--methods`` adds their rows to the earlier ones); ``--fresh`` starts
over.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from samplegrad_bench._args import (
    MissingInputError,
    comma_list,
    int_at_least,
    int_list,
    positive_float,
    positive_int,
)
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    progress,
    pyplot,
    read_results,
    save_figure,
    seed_all,
    write_json,
)
from samplegrad_bench._merge import (
    add_merge_argument,
    check_same,
    finish_info,
    provenance,
    read_pair,
    replace_rows,
    run_info,
)
from samplegrad_bench.estimators import (
    PEER_REDGE,
    bench_methods,
    default_knobs,
    estimate,
    fit_n_samples,
    is_score_function,
    unsupported,
    with_state,
)
from samplegrad_bench.tasks import sudoku as S

# knobs per estimator (reference settings: docs/methods.md#redge-settings;
# redge_exact wants t1 >= 0.3)
KNOBS: dict[str, dict[str, Any]] = {
    "redge": {"n_steps": 5, "t1": 0.1},
    "redge_cov": {"n_steps": 5, "t1": 0.2},
    "redge_max": {"n_steps": 5, "t1": 0.8},
    "redge_exact": {"n_steps": 5, "t1": 0.3},
    PEER_REDGE: {"n_steps": 5, "t1": 0.1},
    "gumbel_soft": {"tau": 0.1},
    "gumbel_hard": {"tau": 0.1},
    "reinmax": {"tau": 1.0},
    "gumbel_rao": {"tau": 0.1, "n_rao": 10},
    "gst": {"tau": 0.5},
    "rebar": {"tau": 0.5},
    "relax": {"tau": 0.5},
}


# the small knob sweep of `--sweep` (each estimator's reference setting included)
SWEEP: dict[str, list[dict[str, Any]]] = {
    "redge": [{"t1": 0.1}, {"t1": 0.5}, {"t1": 0.9}],
    "redge_cov": [{"t1": 0.2}, {"t1": 0.5}, {"t1": 0.9}],
    "redge_max": [{"t1": 0.5}, {"t1": 0.8}, {"t1": 0.95}],
    "redge_exact": [{"t1": 0.3}, {"t1": 0.5}, {"t1": 0.9}],
    PEER_REDGE: [{"t1": 0.1}, {"t1": 0.5}, {"t1": 0.9}],
    "gumbel_soft": [{"tau": 0.1}, {"tau": 1.0}, {"tau": 2.0}],
    "gumbel_hard": [{"tau": 0.1}, {"tau": 1.0}, {"tau": 2.0}],
    "reinmax": [{"tau": 1.0}, {"tau": 2.0}, {"tau": 4.0}],
    "gumbel_rao": [{"tau": 0.1}, {"tau": 0.5}, {"tau": 1.0}],
    "gst": [{"tau": 0.1}, {"tau": 0.5}, {"tau": 1.0}],
    "rebar": [{"tau": 0.1}, {"tau": 0.5}, {"tau": 1.0}],
    "relax": [{"tau": 0.1}, {"tau": 0.5}, {"tau": 1.0}],
}


@dataclass
class SudokuConfig:
    """Settings of one benchmark run (printed and saved with the results)."""

    n_puzzles: int = 34  # per difficulty
    difficulties: tuple[str, ...] = ("easy", "medium", "hard")
    budgets: tuple[int, ...] = (100, 300, 1000)  # gradient steps at which to report
    n_samples: int = 2  # samples per step (every estimator; RLOO needs >= 2)
    lr: float = 0.1
    eval_every: int = 20  # argmax check for the curves
    eval_draws: int = 8  # sampled grids per puzzle at each budget
    ema: float = 0.9  # REINFORCE baseline: EMA of past values (per puzzle)
    score_per_puzzle: bool = True
    methods: tuple[str, ...] = ()  # empty: every estimator of bench_methods()
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # overrides of KNOBS
    seed: int = 0


def method_knobs(name: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict:
    """Knobs used for ``name``: its defaults, then :data:`KNOBS`, then ``overrides``."""
    knobs = {**default_knobs(name), **KNOBS.get(name, {}), **(overrides or {}).get(name, {})}
    if name == "reinforce":
        knobs.pop("baseline", None)  # set by step(): an EMA of past penalties
    return knobs


# ---------------------------------------------------------------- optimization state


@dataclass
class State:
    """Logits of every puzzle, their optimizer, and the REINFORCE baselines."""

    logits: torch.Tensor  # (P, 81, 9), free (clamping is applied in the loss)
    allowed: torch.Tensor  # (P, 81, 9) bool, S.clue_mask(puzzles): False = clamped to -inf
    opt: torch.optim.Optimizer
    baseline: torch.Tensor  # (P,) EMA of past penalties (nan before the first step)
    step: int = 0


def init(puzzles: torch.Tensor, lr: float) -> State:
    """Uniform logits (no prior) for ``puzzles`` ``(P, 81)`` and a fresh Adam."""
    allowed = S.clue_mask(puzzles)
    logits = torch.zeros(allowed.shape, requires_grad=True)
    return State(logits, allowed, torch.optim.Adam([logits], lr=lr),
                 torch.full((len(puzzles),), math.nan))


def _baseline(b: torch.Tensor) -> torch.Tensor | None:
    return None if bool(torch.isnan(b).any()) else b


def step(state: State, name: str, knobs: dict[str, Any], n_samples: int, ema: float = 0.9,
         per_puzzle: bool = True) -> torch.Tensor:
    """One Adam step on ``E[penalty]`` with estimator ``name``; returns the per-puzzle
    Monte Carlo penalties ``(P,)`` (for the joint score-function mode: the mean, repeated)."""
    state.opt.zero_grad(set_to_none=True)
    clamped = state.logits.masked_fill(~state.allowed, -math.inf)
    n_puzzles = len(clamped)
    score = is_score_function(name)
    uses_baseline = name == "reinforce"
    if score and per_puzzle:
        total = clamped.new_zeros(())
        values = []
        for p in range(n_puzzles):
            kw = dict(knobs)
            if uses_baseline:
                kw["baseline"] = _baseline(state.baseline[p])
            loss = estimate(S.penalty, clamped[p], name, fit_n_samples(name, n_samples), **kw)
            total = total + loss
            values.append(loss.detach())
        vals = torch.stack(values)
    else:
        kw = dict(knobs)
        if uses_baseline:
            kw["baseline"] = _baseline(state.baseline.sum())
        total = estimate(lambda x: S.penalty(x).sum(-1), clamped, name,
                         fit_n_samples(name, n_samples), **kw)
        vals = torch.full((n_puzzles,), float(total.detach()) / n_puzzles)
    total.backward()
    state.opt.step()
    if uses_baseline:
        old = torch.nan_to_num(state.baseline, nan=0.0)
        first = torch.isnan(state.baseline)
        state.baseline = torch.where(first, vals, ema * old + (1 - ema) * vals)
    state.step += 1
    return vals


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(logits: torch.Tensor, puzzles: torch.Tensor, draws: int = 0,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-puzzle metrics ``(P,)``: argmax solved, argmax violations, and (``draws`` > 0)
    the fraction of sampled grids that solve the puzzle."""
    clamped = S.clue_mask_logits(puzzles, logits)
    grid = S.to_grid(clamped)
    out = {"solved": S.is_solved(grid, puzzles).float(),
           "violations": S.violations(grid).float()}
    if draws:
        probs = torch.softmax(clamped, -1).reshape(-1, 9)
        idx = torch.multinomial(probs, draws, replacement=True, generator=generator)
        samples = idx.reshape(len(puzzles), 81, draws).permute(2, 0, 1) + 1  # (draws, P, 81)
        out["sample_solved"] = S.is_solved(samples, puzzles).float().mean(0)
    return out


def _by_group(values: torch.Tensor, groups: dict[str, torch.Tensor]) -> dict[str, float]:
    return {g: float(values[idx].mean()) for g, idx in groups.items()}


def run_method(name: str, puzzles: torch.Tensor, groups: dict[str, torch.Tensor],
               cfg: SudokuConfig) -> dict[str, Any]:
    """Optimize every puzzle with ``name`` for ``max(cfg.budgets)`` steps; metrics per group."""
    seed_all(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    knobs = method_knobs(name, cfg.knobs)
    run_knobs = with_state(name, knobs)  # RELAX: one control variate for the whole run
    state = init(puzzles, cfg.lr)
    n_steps = max(cfg.budgets)
    curve: dict[str, list] = {"step": [], **{g: [] for g in groups}}
    at_budget: dict[str, Any] = {}
    first_solved = torch.full((len(puzzles),), -1)
    losses = []
    bar = progress(range(1, n_steps + 1), desc=f"sudoku {name}", total=n_steps)
    with Timer() as t:
        for s in bar:
            vals = step(state, name, run_knobs, cfg.n_samples, cfg.ema, cfg.score_per_puzzle)
            losses.append(float(vals.mean()))
            if s % cfg.eval_every == 0 or s in cfg.budgets:
                m = evaluate(state.logits, puzzles, cfg.eval_draws if s in cfg.budgets else 0,
                             gen)
                newly = (m["solved"] > 0) & (first_solved < 0)
                first_solved[newly] = s
                curve["step"].append(s)
                for g, frac in _by_group(m["solved"], groups).items():
                    curve[g].append(frac)
                bar.set_postfix_str(f"solved {float(m['solved'].mean()):.2f}")
                if s in cfg.budgets:
                    at_budget[str(s)] = {k: _by_group(v, groups) for k, v in m.items()}
                    at_budget[str(s)]["mean_penalty"] = float(sum(losses[-10:]) / 10)
    if name == "reinforce":
        knobs = {**knobs, "baseline": f"EMA({cfg.ema}) of past penalties" +
                 (", per puzzle" if cfg.score_per_puzzle else ", of the sum")}
    return {"knobs": knobs, "seconds": t.seconds, "curve": curve, "budgets": at_budget,
            "first_solved": first_solved.tolist()}


# ---------------------------------------------------------------- the benchmark


def load_puzzles(cfg: SudokuConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The fixed-seed puzzle set, all difficulties stacked, and each difficulty's indices."""
    parts, groups, start = [], {}, 0
    for d in cfg.difficulties:
        puzzles, _ = S.puzzle_set(cfg.n_puzzles, seed=cfg.seed, difficulty=d)
        parts.append(puzzles)
        groups[d] = torch.arange(start, start + len(puzzles))
        start += len(puzzles)
    return torch.cat(parts), groups


def table_rows(results: dict[str, Any], cfg: SudokuConfig) -> list[dict[str, Any]]:
    """One row per (estimator, budget): solved fraction (argmax) per difficulty, and more."""
    rows = []
    for name, r in results.items():
        for b in cfg.budgets:
            m = r["budgets"].get(str(b))
            if m is None:
                continue
            row: dict[str, Any] = {"estimator": name, "steps": b}
            for d in cfg.difficulties:
                row[f"solved {d}"] = m["solved"][d]
            for d in cfg.difficulties:
                row[f"viol {d}"] = m["violations"][d]
            row["sample solved (all)"] = sum(m["sample_solved"].values()) / len(
                cfg.difficulties)
            rows.append(row)
    return rows


def plot(results: dict[str, Any], cfg: SudokuConfig, path: Path) -> Path:
    """Fraction solved (argmax) vs step, one panel per difficulty, one line per estimator."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(cfg.difficulties), figsize=(4.2 * len(cfg.difficulties), 3.6),
                             sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, d in zip(axes[0], cfg.difficulties):
        for i, (name, r) in enumerate(results.items()):
            ax.plot(r["curve"]["step"], r["curve"][d], label=name, color=cmap(i % 10),
                    ls=("-", "--", ":")[i // 10 % 3])
        ax.set_title(f"{d} ({S.DIFFICULTY_CLUES[d]} clues)")
        ax.set_xlabel("Adam step")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction solved (argmax)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save_figure(fig, path)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-puzzles", type=positive_int, default=None,
                   help="puzzles per difficulty (default 34; quick 4; sweep 4)")
    p.add_argument("--budgets", type=int_list, default=None, metavar="N,...",
                   help="comma list of step budgets (default 100,300,1000; quick 30,100)")
    p.add_argument("--methods", type=comma_list(choices=bench_methods()), default=None,
                   metavar="NAME,...", help="comma list of estimators (default: all)")
    p.add_argument("--n-samples", type=int_at_least(2), default=2,
                   help="samples per step (>= 2: RLOO needs two)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="Adam learning rate")
    p.add_argument("--sf-joint", action="store_true",
                   help="score-function estimators see the summed penalty of all puzzles")
    p.add_argument("--fresh", action="store_true",
                   help="start over: ignore the estimators already in OUT/TAG.json (by "
                        "default a rerun with the same settings keeps them, reuses those asked "
                        "for again at the same knobs, and runs the rest)")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--sweep", action="store_true",
                   help="knob sweep (SWEEP) on a disjoint puzzle set (seed + 1000), default 4 "
                        "puzzles per difficulty, 300 and 1000 steps; writes OUT/sweep.json")
    p.add_argument("--tag", type=str, default=None,
                   help="output names: OUT/TAG.json and OUT/TAG_solved.png "
                        "(default sudoku; quick: sudoku_quick)")
    p.add_argument("--tuned", action="store_true",
                   help="use the best knobs of OUT/sweep.json (from --sweep)")
    add_merge_argument(p)


def config_from_args(args: argparse.Namespace) -> SudokuConfig:
    quick = bool(getattr(args, "quick", False))
    get = lambda k, d=None: getattr(args, k, d)  # noqa: E731
    budgets = get("budgets")
    methods = get("methods")
    cfg = SudokuConfig(
        n_puzzles=get("n_puzzles") or (4 if quick else 34),
        budgets=tuple(budgets) if budgets else
        ((30, 100) if quick else (100, 300, 1000)),
        n_samples=get("n_samples") or 2, lr=get("lr") or 0.1,
        eval_every=10 if quick else 20,
        score_per_puzzle=not get("sf_joint", False),
        methods=tuple(methods) if methods else (), seed=get("seed", 0) or 0)
    if cfg.n_samples < 2:
        raise ValueError("n_samples must be >= 2 (RLOO needs two samples)")
    if any(b < 1 for b in cfg.budgets):
        raise ValueError(f"budgets must be positive; got {cfg.budgets}")
    return cfg


def _score(r: dict[str, Any], budget: int) -> tuple[float, float]:
    m = r["budgets"][str(budget)]
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    return mean(m["solved"]), -mean(m["violations"])


def sweep(cfg: SudokuConfig, out_dir: Path, tag: str = "sweep") -> dict[str, Any]:
    """Run every knob setting of :data:`SWEEP` on puzzles of seed ``cfg.seed + 1000`` (not
    the benchmark's); best = most solved at the last budget, then fewest violations."""
    cfg = SudokuConfig(**{**asdict(cfg), "seed": cfg.seed + 1000, "eval_draws": 0})
    puzzles, groups = load_puzzles(cfg)
    names = [n for n in (cfg.methods or bench_methods()) if n in SWEEP]
    rows, best, runs = [], {}, {}
    info = run_info()
    last = max(cfg.budgets)
    for name in names:
        scored = []
        for knobs in SWEEP[name]:
            r = run_method(name, puzzles, groups, replace(cfg, knobs={name: knobs}))
            scored.append((_score(r, last), knobs))
            runs.setdefault(name, []).append({"knobs": r["knobs"], "budgets": r["budgets"]})
            row = {"estimator": name, "knobs": ", ".join(f"{k}={v}" for k, v in knobs.items())}
            for d in cfg.difficulties:
                row[f"solved {d}"] = r["budgets"][str(last)]["solved"][d]
            for d in cfg.difficulties:
                row[f"viol {d}"] = r["budgets"][str(last)]["violations"][d]
            rows.append(row)
        best[name] = max(scored, key=lambda sk: sk[0])[1]
        write_json(out_dir / f"{tag}.json", {"settings": asdict(cfg), "rows": rows, "best": best,
                                            "runs": runs, "run_info": finish_info(info)})
    print(f"Knob sweep: {len(puzzles)} puzzles (seed {cfg.seed}), {last} steps, "
          f"lr {cfg.lr}, {cfg.n_samples} samples/step\n")
    print(markdown_table(rows, digits=3))
    print(f"\nbest: {best}")
    return {"settings": asdict(cfg), "rows": rows, "best": best, "runs": runs}


def _config(settings: dict[str, Any]) -> SudokuConfig:
    return SudokuConfig(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in settings.items()})


def merge_results(base: dict[str, Any], run: dict[str, Any], run_dir: str | Path
                  ) -> dict[str, Any]:
    """``base`` (a benchmark JSON, or a ``--sweep`` one when it has ``best``) with the
    estimators of ``run`` replaced by ``run``'s; refused (``MergeError``) unless the settings
    agree (the estimator list and their knobs aside)."""
    skip = ("methods", "knobs")
    check_same({k: v for k, v in base["settings"].items() if k not in skip},
               {k: v for k, v in run["settings"].items() if k not in skip}, "settings")
    if "best" in base or "best" in run:  # knob sweeps
        new = list(run["best"])
        old = list(base["best"])
        best = {**{k: v for k, v in base["best"].items() if k not in new}, **run["best"]}
        runs = {**{k: v for k, v in base["runs"].items() if k not in new}, **run["runs"]}
        return {"settings": base["settings"], "rows": replace_rows(base["rows"], run["rows"],
                                                                    new),
                "best": best, "runs": runs, "provenance": provenance(base, old, run, new,
                                                                     run_dir)}
    new = list(run["results"])
    old = list(base["results"])
    results = {**{k: v for k, v in base["results"].items() if k not in new}, **run["results"]}
    knobs = {**{k: v for k, v in base["settings"]["knobs"].items() if k not in new},
             **{k: v for k, v in run["settings"]["knobs"].items() if k in new}}
    settings = {**base["settings"], "knobs": knobs}
    cfg = _config(settings)
    times = [{"estimator": n, "seconds": r["seconds"],
              "ms/step": 1000 * r["seconds"] / max(cfg.budgets)} for n, r in results.items()]
    return {"settings": settings, "results": results, "rows": table_rows(results, cfg),
            "times": times, "provenance": provenance(base, old, run, new, run_dir)}


def _merge(args: argparse.Namespace, tag: str) -> dict[str, Any]:
    base, new = read_pair(Path(args.out), args.merge_from, f"{tag}.json")
    out = merge_results(base, new, args.merge_from)
    write_json(Path(args.out) / f"{tag}.json", out)
    print(markdown_table(out["rows"], digits=3))
    for p in out["provenance"]:
        print(f"{', '.join(p['methods'])}: {p['source']} ({p.get('started', '?')} to "
              f"{p.get('finished', '?')}, load {p.get('load_start', '?')} -> "
              f"{p.get('load_end', '?')})")
    if "results" in out:
        plot(out["results"], _config(out["settings"]), Path(args.out) / f"{tag}_solved.png")
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(getattr(args, "threads", None) or 1)
    if getattr(args, "merge_from", None) is not None:
        tag = ("sweep_quick" if args.quick else "sweep") if getattr(args, "sweep", False) \
            else getattr(args, "tag", None) or ("sudoku_quick" if args.quick else "sudoku")
        return _merge(args, tag)
    cfg = config_from_args(args)
    if getattr(args, "sweep", False):
        cfg = replace(cfg, n_puzzles=getattr(args, "n_puzzles", None) or (1 if args.quick else 4),
                      budgets=cfg.budgets if getattr(args, "budgets", None) else
                      ((30,) if args.quick else (300, 1000)))
        return sweep(cfg, Path(args.out), "sweep_quick" if args.quick else "sweep")
    if getattr(args, "tuned", False):
        import json

        sweep_path = Path(args.out) / "sweep.json"
        if not sweep_path.exists():
            raise MissingInputError(f"--tuned: no knob sweep at {sweep_path}; create it with "
                                    "`samplegrad bench sudoku --sweep` (same --out/--publish)")
        best = json.loads(sweep_path.read_text())["best"]
        cfg = replace(cfg, knobs={**best, **cfg.knobs})
    names = list(cfg.methods) or bench_methods()
    for n in names:  # ARM/DisARM: binary variables only
        if unsupported(n, fit_n_samples(n, cfg.n_samples), 9):
            print(f"skipped {unsupported(n, fit_n_samples(n, cfg.n_samples), 9)}")
    names = [n for n in names if not unsupported(n, fit_n_samples(n, cfg.n_samples), 9)]
    out_dir = Path(args.out)
    tag = getattr(args, "tag", None) or ("sudoku_quick" if args.quick else "sudoku")
    json_path = out_dir / f"{tag}.json"
    settings = asdict(cfg)
    settings["knobs"] = {n: method_knobs(n, cfg.knobs) for n in names}
    results: dict[str, Any] = {}
    info = run_info()
    if not getattr(args, "fresh", False) and json_path.exists():
        # the estimators already in OUT with the same settings stay (an earlier --methods run
        # or an interrupted one); one asked for again is reused only at the same knobs
        old = read_results(json_path, "results", dict)
        skip = ("methods", "knobs")
        plain = _plain(settings)
        same = {k: v for k, v in old.get("settings", {}).items() if k not in skip}
        mine = {k: v for k, v in plain.items() if k not in skip}
        if same == mine:
            old_knobs = old["settings"].get("knobs", {})
            results = {n: r for n, r in old["results"].items()
                       if n not in names or old_knobs.get(n) == plain["knobs"].get(n)}
            settings["knobs"] = {**{n: old_knobs[n] for n in results if n in old_knobs},
                                 **settings["knobs"]}
    puzzles, groups = load_puzzles(cfg)
    sizes = ", ".join(f"{len(i)} {d} ({S.DIFFICULTY_CLUES[d]} clues)" for d, i in groups.items())
    print(f"Sudoku without a prior: {len(puzzles)} puzzles ({sizes}), seed {cfg.seed}")
    print(f"settings: {settings}")
    for name in names:
        if name in results:
            continue
        results[name] = run_method(name, puzzles, groups, cfg)
        out = {"settings": settings, "results": results, "rows": table_rows(results, cfg),
               "run_info": info}
        write_json(json_path, out)  # after every estimator: an interrupt loses at most one
    rows = table_rows(results, cfg)
    print("\nFraction of puzzles whose argmax grid solves the puzzle (headline), mean "
          "violations of the argmax grid, and P(one sampled grid solves), after each budget:\n")
    print(markdown_table(rows, digits=3))
    times = [{"estimator": n, "seconds": r["seconds"],
              "ms/step": 1000 * r["seconds"] / max(cfg.budgets)} for n, r in results.items()]
    print("\n" + markdown_table(times, digits=3))
    out = {"settings": settings, "results": results, "rows": rows, "times": times,
           "run_info": finish_info(info)}
    write_json(json_path, out)
    plot(results, cfg, out_dir / f"{tag}_solved.png")
    return out


def _plain(obj: Any) -> Any:
    import json

    from samplegrad_bench._common import _jsonable

    return json.loads(json.dumps(_jsonable(obj)))
