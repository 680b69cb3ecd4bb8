"""`samplegrad bench guidance`: reward guidance of masked discrete diffusion models.

For each task, checkpoint (weak = ``early``, strong = ``final``, from `samplegrad train-mdm`)
and estimator (every ``bench_methods()`` name, plus the unguided sampler), the same fixed
inputs and sampler seed are run through :func:`samplegrad.discrete.sample` with a guide
from :func:`samplegrad.discrete.make_guide`:

- Sudoku: ``n_puzzles`` puzzles from ``generate_puzzles`` (fixed seed), clues clamped;
  objective the constraint penalty. Metrics: exact-solution rate and mean violations.
- Digits: unconditional 8x8 binary digits; objective ``-log p(target | image)`` under the
  cached digit classifier. Metrics: mean log p(target), fraction classified as the target.

Both report the expected path KL of the guided to the unguided sampler (sum over steps and
masked positions of P(revealed at this step) * KL(q_i || p_i), an upper bound on the KL
between the two final-sample laws), wall time, and the autograd graph memory of one
guidance optimizer step (first sampling step, all free positions masked).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from samplegrad.categorical import get_method
from samplegrad.checkpoint import CheckpointError
from samplegrad.discrete import GuidanceConfig, guided_logits, load_model, make_guide, sample
from samplegrad.discrete.sampler import initial_tokens
from samplegrad_bench._args import (
    MissingInputError,
    UsageError,
    comma_list,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    peak_rss_mb,
    progress,
    pyplot,
    save_figure,
    saved_tensor_bytes,
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
from samplegrad_bench.estimators import bench_methods, default_knobs, with_state
from samplegrad_bench.tasks.mdm_objectives import (
    digit_objective,
    sudoku_grid,
    sudoku_objective,
    sudoku_tokens,
)

UNGUIDED = "unguided"
TASKS = ("sudoku", "digits")


@dataclass
class BenchConfig:
    """Settings of one `bench guidance` run (printed and saved with the results)."""

    checkpoints: tuple[str, ...] = ("early", "final")
    methods: tuple[str, ...] = ()  # empty: unguided + every bench_methods() name
    n_samples: int = 4
    n_opt_steps: int = 10
    lr: float = 0.5
    kl_mode: str = "prox"
    warm_start: bool = True
    # Sudoku
    n_puzzles: int = 100
    difficulty: str = "easy"
    puzzle_seed: int = 2026
    sudoku_steps: int = 16
    sudoku_kl_weight: float = 0.05
    # digits
    n_digits: int = 100
    target_digit: int = 3
    digits_steps: int = 16
    digits_kl_weight: float = 1.0
    batch_size: int = 50
    knobs: dict[str, dict] = field(default_factory=dict)


def quick_config() -> BenchConfig:
    return BenchConfig(checkpoints=("final",), methods=(UNGUIDED, "redge", "straight_through",
                                                         "rloo"),
                       n_opt_steps=3, n_puzzles=6, n_digits=6, sudoku_steps=6, digits_steps=6,
                       batch_size=6)


def _guide_config(cfg: BenchConfig, method: str, kl_weight: float) -> GuidanceConfig:
    # with_state: RELAX keeps one control variate over the whole run (every guided step)
    return GuidanceConfig(method, cfg.n_samples, cfg.n_opt_steps, cfg.lr, kl_weight,
                          cfg.kl_mode, cfg.warm_start,
                          with_state(method, dict(cfg.knobs.get(method, {}))))


def _graph_mib(model, given: torch.Tensor, objective, gcfg: GuidanceConfig) -> float:
    """Autograd bytes saved over one guidance call at the first step, per optimizer step."""
    x = given
    with torch.no_grad():
        p = model(x).float()
    with saved_tensor_bytes() as m:
        guided_logits(p, x, objective, gcfg)
    return m["bytes"] / 2**20 / max(1, gcfg.n_opt_steps)


def _run_batches(model, starts: torch.Tensor, n_steps: int, objective, gcfg, cfg: BenchConfig,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample every row of ``starts`` in batches; returns (tokens, path KL)."""
    outs, kls = [], []
    for i in range(0, len(starts), cfg.batch_size):
        gen = torch.Generator().manual_seed(seed + i)
        torch.manual_seed(seed + i)  # the estimators' own draws
        guide = None if gcfg is None else make_guide(objective, gcfg)
        x, kl = sample(model, n_steps, given=starts[i:i + cfg.batch_size], generator=gen,
                       guide=guide, return_kl=True)
        outs.append(x)
        kls.append(kl)
    return torch.cat(outs), torch.cat(kls)


def run_sudoku(model, method: str, cfg: BenchConfig, puzzles: torch.Tensor,
               seed: int) -> tuple[dict, torch.Tensor]:
    from samplegrad_bench.tasks.sudoku import is_solved, violations

    given = sudoku_tokens(puzzles)
    gcfg = None if method == UNGUIDED else _guide_config(cfg, method, cfg.sudoku_kl_weight)
    with Timer() as t:
        x, kl = _run_batches(model, given, cfg.sudoku_steps, sudoku_objective, gcfg, cfg, seed)
    grids = sudoku_grid(x)
    v = violations(grids).float()
    row = {"solved": float(is_solved(grids, puzzles).float().mean()),
           "violations": float(v.mean()), "path KL": float(kl.mean()),
           "time (s)": t.seconds,
           "graph MiB/opt step": 0.0 if gcfg is None else _graph_mib(
               model, given[: cfg.batch_size], sudoku_objective, gcfg)}
    return row, grids


def run_digits(model, method: str, cfg: BenchConfig, classifier,
               seed: int) -> tuple[dict, torch.Tensor]:
    from samplegrad_bench.tasks.rewards import digit_log_prob

    objective = digit_objective(classifier, cfg.target_digit)
    starts = initial_tokens(model, cfg.n_digits)
    gcfg = None if method == UNGUIDED else _guide_config(cfg, method, cfg.digits_kl_weight)
    with Timer() as t:
        x, kl = _run_batches(model, starts, cfg.digits_steps, objective, gcfg, cfg, seed)
    img = x.float()
    with torch.no_grad():
        lp = digit_log_prob(classifier, img, cfg.target_digit)
        hit = classifier(img).argmax(-1) == cfg.target_digit
    row = {"log p(target)": float(lp.mean()), "P(class = target)": float(hit.float().mean()),
           "path KL": float(kl.mean()), "time (s)": t.seconds,
           "graph MiB/opt step": 0.0 if gcfg is None else _graph_mib(
               model, starts[: cfg.batch_size], objective, gcfg)}
    return row, img


# ---------------------------------------------------------------- plots


def _plot_digits(samples: dict[str, torch.Tensor], path: Path, n: int = 10) -> None:
    plt = pyplot()

    names = list(samples)
    fig, axes = plt.subplots(len(names), n, figsize=(n * 0.6 + 1.8, len(names) * 0.62 + 0.3))
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(samples[name][c].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_sudoku(puzzle: torch.Tensor, grids: dict[str, torch.Tensor], path: Path) -> None:
    plt = pyplot()

    from samplegrad_bench.tasks.sudoku import UNITS

    panels = {"puzzle": puzzle, **grids}
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (name, g) in zip(axes, panels.items()):
        bad = torch.zeros(81, dtype=torch.bool)
        if name != "puzzle":
            for unit in UNITS:  # cells whose digit repeats in one of their units
                vals = g[unit]
                for j, cell in enumerate(unit.tolist()):
                    bad[cell] |= bool((vals == vals[j]).sum() > 1)
        for i in range(81):
            r, c = divmod(i, 9)
            d = int(g[i])
            if d:
                color = "black" if puzzle[i] else ("red" if bad[i] else "tab:blue")
                ax.text(c + 0.5, 8.5 - r, str(d), ha="center", va="center", color=color,
                        fontsize=9, fontweight="bold" if puzzle[i] else "normal")
        for k in range(10):
            lw = 1.6 if k % 3 == 0 else 0.4
            ax.axhline(k, color="k", lw=lw)
            ax.axvline(k, color="k", lw=lw)
        ax.set_xlim(0, 9)
        ax.set_ylim(0, 9)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(name, fontsize=9)
    save_figure(fig, path)


def _plot_tradeoff(rows: list[dict], task: str, metric: str, path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, ck in zip(axes, ("early", "final")):
        for r in rows:
            if r["task"] != task or r["checkpoint"] != ck:
                continue
            ax.scatter(r["path KL"], r[metric], s=18)
            ax.annotate(r["estimator"], (r["path KL"], r[metric]), fontsize=7)
        ax.set_xlabel("expected path KL to the unguided sampler (nats)")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}, checkpoint {ck}")
    save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------- runner


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                   help="folder of TASK/STAGE.pt from `samplegrad train-mdm` (default: the "
                        "cache's checkpoints/mdm; quick: checkpoints/mdm-quick if that is "
                        "missing, trained here if need be)")
    p.add_argument("--tasks", type=comma_list(choices=TASKS), default=list(TASKS),
                   metavar="TASK,...", help="comma list of " + ",".join(TASKS))
    p.add_argument("--methods", type=comma_list(choices=[UNGUIDED, *bench_methods()]),
                   default=None, metavar="NAME,...",
                   help=f"comma list of estimators and {UNGUIDED} (default: all)")
    p.add_argument("--n-puzzles", type=positive_int, default=None, help="Sudoku puzzles")
    p.add_argument("--n-digits", type=positive_int, default=None, help="digit samples")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a BenchConfig field, e.g. --set sudoku_steps=41")
    p.add_argument("--tag", default="", help="suffix of the output files (ablations)")
    add_merge_argument(p)


def _suffix(args: argparse.Namespace) -> str:
    return ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")


def _override(cfg: BenchConfig, items: list[str]) -> BenchConfig:
    """Apply ``FIELD=VALUE`` overrides (ints, floats, bools, strings, comma tuples)."""
    changes: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in BenchConfig.__dataclass_fields__ or name == "knobs":
            raise UsageError(f"--set wants FIELD=VALUE with a BenchConfig field; got {item!r}")
        old = getattr(cfg, name)
        try:
            changes[name] = _set_value(name, old, value)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--set {name}: {e}") from None
    return replace(cfg, **changes)


def _set_value(name: str, old: object, value: str) -> object:
    """``value`` converted like the field ``name`` (numbers checked as the flags are)."""
    if isinstance(old, bool):
        if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    if isinstance(old, tuple):
        return tuple(v for v in value.split(",") if v)
    if isinstance(old, int):
        got = nonneg_int(value) if name in ("puzzle_seed", "target_digit") else \
            positive_int(value)
        if name == "target_digit" and got > 9:
            raise argparse.ArgumentTypeError(f"must be a digit 0-9, got {value!r}")
        return got
    if isinstance(old, float):
        return nonneg_float(value) if name.endswith("kl_weight") else positive_float(value)
    return value


def _checkpoint(ckpt_dir: Path | None, task: str, stage: str, quick: bool) -> Path:
    """``DIR/TASK/STAGE.pt``: ``ckpt_dir`` if given (it must hold it), else the cache's
    `train-mdm` folder; with ``quick``, the cache's tiny stand-ins (trained here in seconds)
    when that is missing. A :class:`MissingInputError` names the command otherwise."""
    from samplegrad_bench.runners.train_mdm import default_ckpt_dir, train_task

    if ckpt_dir is not None:
        path = Path(ckpt_dir) / task / f"{stage}.pt"
        if not path.exists():
            raise MissingInputError(
                f"--checkpoint: no masked-diffusion checkpoint at {path}; create it with "
                f"`samplegrad train-mdm --task {task} --checkpoint {ckpt_dir}`")
        return path
    path = default_ckpt_dir() / task / f"{stage}.pt"
    if path.exists():
        return path
    if not quick:
        raise MissingInputError(
            f"no masked-diffusion checkpoint at {path}; create it with `samplegrad train-mdm "
            f"--task {task}` (or run `samplegrad bench guidance --quick`, which trains tiny "
            "stand-ins)")
    qdir = default_ckpt_dir(quick=True)
    if not (qdir / task / f"{stage}.pt").exists():
        print(f"guidance: no {path}; training a tiny stand-in in {qdir} "
              "(`samplegrad train-mdm` trains the real ones)")
        train_task(task, qdir, quick=True)
    return qdir / task / f"{stage}.pt"


def merge_results(base: dict, run: dict, run_dir: str | Path) -> dict:
    """``base`` (one task's JSON) with the rows of ``run``'s (checkpoint, estimator) pairs
    replaced by ``run``'s, every checkpoint's rows together; refused (``MergeError``) unless
    the settings agree (the method list, the estimators' knobs and the checkpoints aside:
    ``run`` may cover fewer of ``base``'s checkpoints, each row being its own seeded run)."""
    def same(s: dict) -> dict:
        return {**{k: v for k, v in s.items() if k not in ("bench", "estimator_knobs")},
                "bench": {k: v for k, v in s["bench"].items()
                          if k not in ("methods", "checkpoints")}}

    check_same(same(base["settings"]), same(run["settings"]), "settings")
    stages = list(base["settings"]["bench"]["checkpoints"])
    extra = [c for c in run["settings"]["bench"]["checkpoints"] if c not in stages]
    if extra:
        raise MergeError(f"--merge-from: the run has checkpoints the base results do not: "
                         f"{extra}")
    pairs = {(r["checkpoint"], r["estimator"]) for r in run["rows"]}
    merged = [r for r in base["rows"] if (r["checkpoint"], r["estimator"]) not in pairs]
    kept = {r["estimator"] for r in merged}
    merged += run["rows"]
    new = list(dict.fromkeys(r["estimator"] for r in run["rows"]))
    old = list(dict.fromkeys(r["estimator"] for r in base["rows"]))
    rows = [r for st in stages for r in merged if r["checkpoint"] == st]
    knobs = {**{k: v for k, v in base["settings"]["estimator_knobs"].items() if k not in new},
             **run["settings"]["estimator_knobs"]}
    settings = {**base["settings"], "estimator_knobs": knobs,
                "bench": {**base["settings"]["bench"], "methods": list(
                    dict.fromkeys(r["estimator"] for r in rows))}}
    done = list(dict.fromkeys(r["checkpoint"] for r in run["rows"]))
    return {"settings": settings, "rows": rows, "complete": bool(base.get("complete")) and
            bool(run.get("complete")),
            "provenance": provenance(base, old, run, new, run_dir,
                                     replaced=[m for m in new if m not in kept],
                                     checkpoints=done)}


def _merge(args: argparse.Namespace) -> dict:
    """Merge the separate run's task files; only the trade-off plots can be redrawn (the
    sample figures need the samples, which the JSON does not keep)."""
    suffix = _suffix(args)
    result: dict = {"rows": []}
    for task in args.tasks:
        base, new = read_pair(args.out, args.merge_from, f"guidance_{task}{suffix}.json")
        res = merge_results(base, new, args.merge_from)
        write_json(args.out / f"guidance_{task}{suffix}.json", res)
        for stage in dict.fromkeys(r["checkpoint"] for r in res["rows"]):
            print(f"\n{task}, checkpoint {stage}:")
            print(markdown_table([{k: v for k, v in r.items() if k not in ("task", "checkpoint")}
                                  for r in res["rows"] if r["checkpoint"] == stage]))
        if not suffix:
            metric = "log p(target)" if task == "digits" else "violations"
            _plot_tradeoff(res["rows"], task, metric, args.out / f"{task}_tradeoff.png")
        result["rows"] += res["rows"]
    return result


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or 1)
    if getattr(args, "merge_from", None) is not None:
        return _merge(args)
    cfg = quick_config() if args.quick else BenchConfig()
    if args.methods:
        cfg = replace(cfg, methods=tuple(args.methods))
    if args.n_puzzles:
        cfg = replace(cfg, n_puzzles=args.n_puzzles)
    if args.n_digits:
        cfg = replace(cfg, n_digits=args.n_digits)
    cfg = _override(cfg, args.set)
    methods = list(cfg.methods) or [UNGUIDED, *bench_methods()]
    binary = [m for m in methods if m != UNGUIDED and get_method(m).n_classes is not None]
    if binary:  # ARM/DisARM: the guided vocabularies have more than two tokens
        print(f"skipped {', '.join(binary)}: binary variables only (K = 2)")
        methods = [m for m in methods if m not in binary]
    tasks = list(args.tasks)
    out_dir = args.out
    suffix = _suffix(args)
    knobs = {m: {**default_knobs(m), **cfg.knobs.get(m, {})} for m in methods if m != UNGUIDED}
    for task in tasks:  # a missing or damaged checkpoint fails here, before any work
        for stage in cfg.checkpoints:
            path = _checkpoint(args.checkpoint, task, stage, args.quick)
            try:
                load_model(path)
            except CheckpointError as e:
                from samplegrad_bench.runners.train_mdm import default_ckpt_dir

                where = (f" --checkpoint {args.checkpoint}" if args.checkpoint else
                         " --quick" if path.is_relative_to(default_ckpt_dir(quick=True)) else "")
                e.hint = f"`samplegrad train-mdm --task {task}{where} --fresh`"
                raise
    settings = {"bench": asdict(cfg), "estimator_knobs": knobs, "seed": args.seed,
                "threads": torch.get_num_threads()}
    print("settings:", settings)
    _warm_up(methods)
    result = {"settings": settings, "rows": [], "complete": True}
    info = run_info()
    for task in tasks:
        rows, plots, puzzles = _run_task(task, cfg, methods, args, settings)
        path = out_dir / f"guidance_{task}{suffix}.json"
        write_json(path, {"settings": settings, "rows": rows, "complete": True,
                          "peak_rss_mb": peak_rss_mb(), "run_info": finish_info(dict(info))})
        if not suffix:
            _write_plots(rows, plots, cfg, task, out_dir, puzzles)
        result["rows"] += rows
    return result


def _warm_up(methods: list[str]) -> None:
    """One untimed guided step per estimator (first-call imports and allocations)."""
    p = torch.zeros(2, 4, 3)
    x = torch.full((2, 4), 3)
    for m in methods:
        if m != UNGUIDED:
            guided_logits(p, x, lambda y: y[..., 0].sum(-1), GuidanceConfig(m, n_samples=2,
                                                                             n_opt_steps=1))


def _run_task(task: str, cfg: BenchConfig, methods: list[str], args: argparse.Namespace,
              settings: dict) -> tuple[list[dict], dict, torch.Tensor | None]:
    suffix = _suffix(args)
    path = args.out / f"guidance_{task}{suffix}.json"
    puzzles = classifier = None
    if task == "sudoku":
        from samplegrad_bench.tasks.sudoku import generate_puzzles

        puzzles, _ = generate_puzzles(cfg.n_puzzles, cfg.puzzle_seed, cfg.difficulty)
    elif task == "digits":
        from samplegrad_bench.tasks.rewards import digit_classifier

        classifier = digit_classifier()
    else:
        raise SystemExit(f"unknown task {task!r}; choose from sudoku, digits")
    rows: list[dict] = []
    plots: dict = {}
    for stage in cfg.checkpoints:
        model = load_model(_checkpoint(args.checkpoint, task, stage, args.quick))
        bar = progress(methods, desc=f"guidance {task} {stage}", total=len(methods))
        for method in bar:
            bar.set_postfix_str(method)
            if task == "sudoku":
                row, out = run_sudoku(model, method, cfg, puzzles, args.seed)
            else:
                row, out = run_digits(model, method, cfg, classifier, args.seed)
            rows.append({"task": task, "checkpoint": stage, "estimator": method, **row})
            plots[(task, stage, method)] = out
            write_json(path, {"settings": settings, "rows": rows, "complete": False})
        sel = [r for r in rows if r["checkpoint"] == stage]
        print(f"\n{task}, checkpoint {stage}:")
        print(markdown_table([{k: v for k, v in r.items() if k not in ("task", "checkpoint")}
                              for r in sel]))
    return rows, plots, puzzles


def _write_plots(rows, plots, cfg: BenchConfig, task: str, out_dir: Path, puzzles) -> None:
    stage = cfg.checkpoints[-1]
    if task == "digits":
        _plot_digits({m: plots[("digits", stage, m)] for m in [UNGUIDED, *bench_methods()]
                      if ("digits", stage, m) in plots}, out_dir / "digits_samples.png")
        _plot_tradeoff(rows, "digits", "log p(target)", out_dir / "digits_tradeoff.png")
    if task == "sudoku":
        sel = [r for r in rows if r["checkpoint"] == stage]
        best = max((r for r in sel if r["estimator"] != UNGUIDED),
                   key=lambda r: (r["solved"], -r["violations"]))["estimator"]
        from samplegrad_bench.tasks.sudoku import violations

        g_best = plots[("sudoku", stage, best)]
        i = int(violations(g_best).argmin())
        _plot_sudoku(puzzles[i], {UNGUIDED: plots[("sudoku", stage, UNGUIDED)][i],
                                  best: g_best[i]}, out_dir / "sudoku_example.png")
        _plot_tradeoff(rows, "sudoku", "violations", out_dir / "sudoku_tradeoff.png")
