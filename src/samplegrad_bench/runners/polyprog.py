"""`samplegrad bench polyprog`: every estimator on polynomial programming.

Minimize ``E[mean_d |x_d - 0.45|^p]`` over ``L`` binary variables with Adam on free logits
(start at 0), for several powers ``p``. Each estimator's knob is chosen by a small sweep on a
separate seed (fewer steps), then the chosen setting runs on every evaluation seed. The score
is the exact expected loss at the final logits (closed form, no sampling noise) and its gap to
the optimum ``0.45^p``. REINFORCE uses an exponential moving average of past batch losses as
its baseline. Finished runs are cached under ``--cache`` so an interrupted run resumes (and
writes the same files, timings aside); ``--fresh`` reruns them all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from samplegrad.checkpoint import CheckpointWarning
from samplegrad_bench._args import (
    comma_list,
    float_list,
    positive_float,
    positive_int,
    seed_list,
)
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    progress,
    pyplot,
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
from samplegrad_bench.estimators import bench_methods, estimate, fit_n_samples, with_state
from samplegrad_bench.paths import cache_dir
from samplegrad_bench.tasks import polyprog as task

_T1 = (0.1, 0.2, 0.4, 0.8)
# knob sweeps per estimator (the reference settings are among them: redge t1=0.1, cov 0.2,
# max 0.8, Gumbel tau=0.02); "ema" is REINFORCE's baseline decay, handled by the loop.
SWEEPS: dict[str, list[dict[str, Any]]] = {
    **{n: [{"n_steps": 5, "t1": t} for t in _T1]
       for n in ("redge", "redge_cov", "redge_max", "redge_exact", "peer_redge")},
    "gumbel_soft": [{"tau": t} for t in (0.02, 0.1, 0.5, 1.0)],
    "gumbel_hard": [{"tau": t} for t in (0.02, 0.1, 0.5, 1.0)],
    "reinmax": [{"tau": t} for t in (1.0, 1.5, 2.0, 3.0)],
    "gumbel_rao": [{"tau": t} for t in (0.1, 0.5, 1.0)],
    "gst": [{"tau": t} for t in (0.1, 0.5, 1.0)],
    "rebar": [{"tau": t} for t in (0.5, 1.0)],
    "relax": [{"tau": t} for t in (0.5, 1.0)],
    "reinforce": [{"ema": d} for d in (0.9, 0.99)],
}


@dataclass(frozen=True)
class PolyProgConfig:
    """Settings of the benchmark (printed with each result)."""

    n_vars: int = 128
    batch: int = 256
    steps: int = 1000
    lr: float = 0.05
    powers: tuple[float, ...] = (1.5, 2.0, 3.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    sweep_seed: int = 100
    sweep_steps: int = 300
    sweep_power: float | None = None  # sweep at this power only, reuse its knob; None: each p
    log_every: int = 10


QUICK = PolyProgConfig(n_vars=128, batch=64, steps=200, powers=(2.0,), seeds=(0, 1),
                       sweep_steps=100)


def knob_grid(name: str) -> list[dict[str, Any]]:
    """The knob settings swept for estimator ``name`` (``[{}]`` when it has none)."""
    return [dict(k) for k in SWEEPS.get(name, [{}])]


def optimize(name: str, knobs: dict[str, Any], power: float, seed: int, *, n_vars: int,
             batch: int, steps: int, lr: float = 0.05, log_every: int = 10) -> dict[str, Any]:
    """One Adam run from zero logits ``(n_vars, 2)``; returns the exact final E[loss], the gap
    to the optimum, the wall time and the curve of exact E[loss] every ``log_every`` steps."""
    if steps < 1 or batch < 1 or n_vars < 1:
        raise ValueError(f"steps, batch and n_vars must be >= 1, got {steps}, {batch}, {n_vars}")
    seed_all(seed)
    knobs = dict(knobs)
    decay = knobs.pop("ema", None)
    logits = torch.zeros(n_vars, 2, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    baseline: float | None = None

    def f(x: torch.Tensor) -> torch.Tensor:  # (S, L, 2) -> (S,)
        return task.loss(x, power)

    run_knobs = with_state(name, knobs)  # RELAX: one control variate for the whole run
    curve_steps, curve = [0], [float(task.expected_loss(logits.detach(), power))]
    with Timer() as t:
        for step in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            kw = dict(run_knobs)
            if decay is not None:
                kw["baseline"] = baseline
            value = estimate(f, logits, name, fit_n_samples(name, batch), **kw)
            value.backward()
            opt.step()
            if decay is not None:
                v = float(value.detach())
                baseline = v if baseline is None else decay * baseline + (1 - decay) * v
            if step % log_every == 0 or step == steps:
                curve_steps.append(step)
                curve.append(float(task.expected_loss(logits.detach(), power)))
    final = curve[-1]
    return {"estimator": name, "knobs": {**knobs, **({"ema": decay} if decay else {})},
            "power": power, "seed": seed, "final": final, "gap": final - task.optimum(power),
            "seconds": t.seconds, "curve_steps": curve_steps, "curve": curve}


def _cached(cache: Path | None, key: dict[str, Any], fn, fresh: bool = False) -> dict[str, Any]:
    """``fn()``, memoized as JSON under ``cache`` by ``key`` (no cache when ``cache`` is None;
    ``fresh``: recomputed and overwritten). A damaged entry is recomputed with a warning."""
    if cache is None:
        return fn()
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{key['estimator']}-{h}.json"
    if path.exists() and not fresh:
        try:
            out = json.loads(path.read_text())
            if not isinstance(out, dict) or "final" not in out:
                raise ValueError("not a finished run")
            return out
        except (ValueError, UnicodeDecodeError) as e:
            warnings.warn(f"cache {path} is unusable ({e}); running it again",
                          CheckpointWarning, stacklevel=2)
    out = fn()
    write_json(path, out)
    return out


def _run(name: str, knobs: dict, power: float, seed: int, steps: int, cfg: PolyProgConfig,
         cache: Path | None, fresh: bool = False) -> dict[str, Any]:
    kw = {"n_vars": cfg.n_vars, "batch": cfg.batch, "steps": steps, "lr": cfg.lr,
          "log_every": cfg.log_every}
    key = {"estimator": name, "knobs": knobs, "power": power, "seed": seed, **kw}
    if fit_n_samples(name, cfg.batch) != cfg.batch:  # capped or rounded (ARMS, unordered set)
        key["n_samples"] = fit_n_samples(name, cfg.batch)
    return _cached(cache, key, lambda: optimize(name, knobs, power, seed, **kw), fresh)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def knob_str(knobs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in knobs.items()) or "-"


def benchmark(cfg: PolyProgConfig, names: list[str], cache: Path | None = None,
              on_update=None, fresh: bool = False) -> dict[str, Any]:
    """Sweep then evaluate every estimator in ``names`` at every power; returns the results.

    Finished runs are memoized in ``cache`` (a rerun resumes; ``fresh``: rerun them all)."""
    result: dict[str, Any] = {"config": asdict(cfg), "sweep": [], "runs": [], "rows": []}
    sweep_powers = cfg.powers if cfg.sweep_power is None else (cfg.sweep_power,)
    total = (sum(len(knob_grid(n)) for n in names) * len(sweep_powers)
             + len(cfg.powers) * len(names) * len(cfg.seeds))
    bar = progress(desc="polyprog", total=total, disable=None)
    chosen: dict[tuple[str, float], dict[str, Any]] = {}
    for power in cfg.powers:
        for name in names:
            bar.set_postfix_str(f"p={power:g} {name}")
            sp = power if cfg.sweep_power is None else cfg.sweep_power
            if (name, sp) not in chosen:
                sweep = []
                for knobs in knob_grid(name):
                    r = _run(name, knobs, sp, cfg.sweep_seed, cfg.sweep_steps, cfg, cache,
                             fresh)
                    sweep.append({k: r[k] for k in ("estimator", "knobs", "power", "final")})
                    bar.update()
                chosen[(name, sp)] = min(sweep, key=lambda r: r["final"])["knobs"]
                result["sweep"] += sweep
            best = chosen[(name, sp)]
            runs = []
            for seed in cfg.seeds:
                runs.append(_run(name, best, power, seed, cfg.steps, cfg, cache, fresh))
                bar.update()
            result["runs"] += runs
            m, sd = _mean_std([r["final"] for r in runs])
            result["rows"].append({
                "p": power, "estimator": name, "knobs": knob_str(best),
                "final E[loss]": m, "std": sd, "gap to optimum": m - task.optimum(power),
                "s/run": sum(r["seconds"] for r in runs) / len(runs)})
            if on_update is not None:
                on_update(result)
    bar.close()
    return result


def caption(cfg: PolyProgConfig, power: float) -> str:
    start = float(task.expected_loss(torch.zeros(1, 2), power))
    at = "" if cfg.sweep_power is None else f" at p={cfg.sweep_power:g} (used for every p)"
    return (f"L={cfg.n_vars} binary variables, loss mean_d |x_d - 0.45|^{power:g}, Adam lr "
            f"{cfg.lr:g} from zero logits, batch {cfg.batch}, {cfg.steps} steps, seeds "
            f"{list(cfg.seeds)}; knob chosen by a sweep on seed {cfg.sweep_seed} with "
            f"{cfg.sweep_steps} steps{at}. final E[loss] = exact expectation at the final logits "
            f"(mean and std over seeds); start {start:.4f}, optimum 0.45^{power:g} = "
            f"{task.optimum(power):.4f}.")


def tables(result: dict[str, Any], cfg: PolyProgConfig) -> str:
    """One markdown table per power, rows sorted by final E[loss]."""
    parts = []
    for power in cfg.powers:
        rows = sorted((r for r in result["rows"] if r["p"] == power),
                      key=lambda r: r["final E[loss]"])
        shown = [{"estimator": r["estimator"], "knobs": r["knobs"],
                  "final E[loss] (mean ± std)": f"{r['final E[loss]']:.5f} ± {r['std']:.5f}",
                  "gap to optimum": r["gap to optimum"], "s/run": r["s/run"]} for r in rows]
        parts.append(f"**p = {power:g}.** {caption(cfg, power)}\n\n{markdown_table(shown)}")
    return "\n\n".join(parts)


def plot(result: dict[str, Any], cfg: PolyProgConfig, path: Path) -> None:
    """Gap to the optimum against the step (mean over seeds), one panel per power."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(cfg.powers), figsize=(5 * len(cfg.powers), 4),
                             squeeze=False)
    names = list(dict.fromkeys(r["estimator"] for r in result["runs"]))
    cmap = plt.get_cmap("tab20")
    for ax, power in zip(axes[0], cfg.powers):
        for i, name in enumerate(names):
            runs = [r for r in result["runs"] if r["estimator"] == name and r["power"] == power]
            if not runs:
                continue
            curves = torch.tensor([r["curve"] for r in runs]) - task.optimum(power)
            ax.plot(runs[0]["curve_steps"], curves.mean(0).clamp_min(1e-9), label=name,
                    color=cmap(i % 20), ls="--" if name.startswith(("peer", "reinf", "rloo"))
                    else "-")
        ax.set_yscale("log")
        ax.set_title(f"p = {power:g}")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("exact E[loss] - optimum (mean over seeds)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Polynomial programming, L={cfg.n_vars}, batch {cfg.batch}")
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=None,
                   help="Adam steps per evaluation run")
    p.add_argument("--sweep-steps", type=positive_int, default=None,
                   help="Adam steps per knob-sweep run")
    p.add_argument("--batch", type=positive_int, default=None, help="samples per Adam step")
    p.add_argument("--n-vars", type=positive_int, default=None, help="binary variables L")
    p.add_argument("--powers", type=float_list, default=None, metavar="P,...",
                   help="comma list of loss powers p")
    p.add_argument("--seeds", type=seed_list, default=None, metavar="S,...",
                   help="comma list of evaluation seeds (default 0,1,2,3,4; quick 0,1)")
    p.add_argument("--sweep-power", type=positive_float, default=None,
                   help="sweep knobs at this power only and reuse them (default: every power)")
    p.add_argument("--methods", type=comma_list(choices=bench_methods()), default=None,
                   metavar="NAME,...", help="comma list of estimators (default: all)")
    p.add_argument("--cache", type=str, default=None,
                   help="folder of finished runs, for resuming (default: the user cache's "
                        "polyprog/; '' disables); a rerun reuses the runs finished there")
    p.add_argument("--fresh", action="store_true",
                   help="start over: rerun every run and overwrite its cache entry")
    add_merge_argument(p)


def config_from_args(args: argparse.Namespace) -> PolyProgConfig:
    cfg = QUICK if args.quick else PolyProgConfig()
    over = {"steps": args.steps, "sweep_steps": args.sweep_steps, "batch": args.batch,
            "n_vars": args.n_vars,
            "powers": tuple(args.powers) if args.powers else None,
            "seeds": tuple(args.seeds) if args.seeds else None,
            "sweep_power": args.sweep_power}
    return replace(cfg, **{k: v for k, v in over.items() if v is not None})


def merge_results(base: dict[str, Any], run: dict[str, Any], run_dir: str | Path
                  ) -> dict[str, Any]:
    """``base`` with the sweeps, runs and rows of ``run``'s estimators replaced by ``run``'s;
    refused (``MergeError``) unless the configs agree."""
    check_same(base["config"], run["config"], "configs")
    new = list(dict.fromkeys(r["estimator"] for r in run["rows"]))
    old = list(dict.fromkeys(r["estimator"] for r in base["rows"]))
    done = [(r["estimator"], r["p"]) for r in run["rows"]]  # an unfinished run: rows only
    runs = [r for r in run["runs"] if (r["estimator"], r["power"]) in done]
    return {"config": run["config"], "sweep": replace_rows(base["sweep"], run["sweep"], new),
            "runs": replace_rows(base["runs"], runs, new),
            "rows": replace_rows(base["rows"], run["rows"], new),
            "provenance": provenance(base, old, run, new, run_dir)}


def _merge(args: argparse.Namespace, stem: str) -> dict[str, Any]:
    base, new = read_pair(args.out, args.merge_from, f"{stem}.json")
    result = merge_results(base, new, args.merge_from)
    cfg = PolyProgConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in result["config"].items()})
    write_json(args.out / f"{stem}.json", result)  # curves already subsampled in both
    print(tables(result, cfg))
    for p in result["provenance"]:
        print(f"{', '.join(p['methods'])}: {p['source']} ({p.get('started', '?')} to "
              f"{p.get('finished', '?')}, load {p.get('load_start', '?')} -> "
              f"{p.get('load_end', '?')})")
    plot(result, cfg, args.out / f"{stem}.png")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not getattr(args, "threads", None):
        torch.set_num_threads(1)
    if getattr(args, "merge_from", None) is not None:
        return _merge(args, "polyprog_quick" if args.quick else "polyprog")
    cfg = config_from_args(args)
    names = args.methods or bench_methods()
    out = args.out
    json_path = out / ("polyprog_quick.json" if args.quick else "polyprog.json")
    cache = cache_dir("polyprog") if args.cache is None else Path(args.cache) if args.cache \
        else None
    print(f"config: {cfg}")
    info = run_info()

    def save(res: dict[str, Any]) -> None:  # small JSON: curves subsampled, sweep kept
        write_json(json_path, {**res, "run_info": info, "runs": [{**r, "curve": r["curve"][::5],
                                                "curve_steps": r["curve_steps"][::5]}
                                               for r in res["runs"]]})

    result = benchmark(cfg, names, cache, on_update=save, fresh=args.fresh)
    finish_info(info)
    save(result)
    print()
    print(tables(result, cfg))
    plot(result, cfg, out / ("polyprog_quick.png" if args.quick else "polyprog.png"))
    return result
