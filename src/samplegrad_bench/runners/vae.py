"""`samplegrad bench vae`: categorical VAEs trained with every gradient estimator.

For each estimator and seed: train a VAE (−ELBO, analytic KL to the uniform prior) with
Adam, checkpointing under the cache's ``vae/`` folder (resumable: an interrupted run continues
exactly where it stopped and writes the same files, timings aside; finished runs are reused;
``--fresh`` starts over), then evaluate on the test set with
exact one-hot samples: −ELBO (Monte Carlo over ``z ~ q``) and the importance-weighted bound
with ``iwae_samples`` samples. Besides the −ELBO runs of every estimator, the IWAE bound with
``iwae_train_samples`` samples is trained as a second objective, with VIMCO and with the
pathwise estimators of ``iwae_estimators`` (rows ``NAME (IWAE)``). Estimators that cannot
run on a cell (ARM/DisARM on K > 2 classes) are skipped with a note. Prints a mean ± std
table over seeds and writes JSON, a markdown table and a loss-curve PNG under ``runs/vae/``
(``--publish``: ``docs/results/vae/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from samplegrad.checkpoint import load_checkpoint, remove_checkpoint
from samplegrad_bench._args import comma_list, positive_int, seed_list
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    progress,
    pyplot,
    save_figure,
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
from samplegrad_bench.data import load_digits, load_idx_dataset
from samplegrad_bench.estimators import (
    bench_methods,
    default_knobs,
    fit_n_samples,
    is_score_function,
    unsupported,
)
from samplegrad_bench.paths import cache_dir
from samplegrad_bench.tasks.vae import (
    VAEConfig,
    VAETrainConfig,
    fit,
    iwae_bound,
    neg_elbo,
    save_train_state,
    train_init,
)

CONFIGS = {"20x10": (20, 10), "48x2": (48, 2)}


@dataclass
class Settings:
    """One benchmark cell: dataset x latent config, shared by every estimator and seed."""

    dataset: str = "digits"
    config: str = "20x10"
    steps: int = 1000
    seeds: int = 3
    batch_size: int = 100
    lr: float = 2e-3
    hidden: tuple[int, ...] = (256, 128)
    rloo_samples: int = 4
    elbo_samples: int = 20
    iwae_samples: int = 1000
    test_subset: int | None = None  # first N test images for the IWAE bound (None: all)
    checkpoint_every: int = 250
    estimators: list[str] = field(default_factory=list)
    iwae_train_samples: int = 5  # S of the IWAE training objective
    iwae_estimators: tuple[str, ...] = ("vimco", "redge", "reinmax", "gumbel_hard")


def defaults(dataset: str, quick: bool) -> Settings:
    """Full or quick settings per dataset (see the README for the budget reasoning)."""
    if dataset == "digits":
        s = Settings()
        if quick:
            s = replace(s, steps=300, seeds=1, iwae_samples=200, elbo_samples=10)
    elif dataset == "fashion":
        s = Settings(dataset="fashion", config="48x2", steps=1000, seeds=1, batch_size=200,
                     lr=5e-4, hidden=(512, 256), test_subset=500, elbo_samples=5)
        if quick:
            s = replace(s, steps=50, iwae_samples=100, test_subset=100, elbo_samples=5)
    else:
        raise ValueError(f"dataset must be 'digits' or 'fashion', got {dataset!r}")
    return s


def load_data(dataset: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Train images, test images (binary) and whether training binarizes dynamically.

    Digits: thresholded at 0.5 (fixed). Fashion-MNIST: intensities for training (each
    minibatch resampled as Bernoulli(intensity)); the test set is binarized once with a
    fixed generator (seed 0).
    """
    if dataset == "digits":
        return load_digits("train", binarize=True)[0], load_digits("test", binarize=True)[0], False
    train = load_idx_dataset("train", root)[0]
    test = load_idx_dataset("test", root)[0]
    test = torch.bernoulli(test, generator=torch.Generator().manual_seed(0))
    return train, test, True


IWAE_SUFFIX = " (IWAE)"


def split_run(run: str) -> tuple[str, str]:
    """``"vimco (IWAE)"`` -> ``("vimco", "iwae")``; ``"redge"`` -> ``("redge", "elbo")``."""
    if run.endswith(IWAE_SUFFIX):
        return run[: -len(IWAE_SUFFIX)], "iwae"
    return run, "elbo"


def train_config(s: Settings, estimator: str, dynamic: bool) -> VAETrainConfig:
    """``estimator`` is a run name: an estimator (−ELBO) or ``"NAME (IWAE)"`` (the
    ``iwae_train_samples``-sample bound). Multi-sample score-function estimators (RLOO,
    ARMS, the unordered-set estimator) use ``rloo_samples``; ARM/DisARM one pair."""
    name, objective = split_run(estimator)
    if objective == "iwae":
        n = s.iwae_train_samples
    elif name in ("rloo", "arms", "unordered_set"):
        n = s.rloo_samples
    else:
        n = fit_n_samples(name, 1)
    knobs = default_knobs(name)
    if name == "unordered_set":
        knobs["batch_dims"] = 1  # one set of configurations per image
    return VAETrainConfig(estimator=name, knobs=knobs, n_samples=n, lr=s.lr,
                          batch_size=s.batch_size, dynamic_binarization=dynamic,
                          objective=objective)


def run_tag(s: Settings, tc: VAETrainConfig, seed: int) -> str:
    """A short hash of everything that determines a run (so changed settings never resume
    from a stale checkpoint)."""
    tcd = asdict(tc)
    if not is_score_function(tc.estimator):  # no effect on pathwise runs: keep their tags
        tcd.pop("per_datapoint_credit")
    if tcd["objective"] == "elbo":  # the default: keep the tags of the runs made before it
        tcd.pop("objective")
    key = json.dumps({"s": {k: v for k, v in asdict(s).items()
                            if k not in ("seeds", "estimators", "checkpoint_every")},
                      "tc": tcd, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def smooth_curve(history: list[float], window: int = 50,
                 every: int | None = None) -> list[list[float]]:
    """Moving average of the per-step loss, subsampled (default: about 200 points):
    ``[[step, value], ...]``."""
    h = torch.tensor(history, dtype=torch.float64)
    if len(h) == 0:
        return []
    every = every or max(1, len(h) // 200)
    c = torch.cat([torch.zeros(1, dtype=torch.float64), h.cumsum(0)])
    out = []
    for t in range(every, len(h) + 1, every):
        lo = max(0, t - window)
        out.append([t, float((c[t] - c[lo]) / (t - lo))])
    return out


def run_one(s: Settings, estimator: str, seed: int, train: torch.Tensor, test: torch.Tensor,
            dynamic: bool, ckpt_dir: Path, bar: Any = None, fresh: bool = False,
            ) -> dict[str, Any]:
    """Train (or resume / reuse) one VAE and evaluate it; returns its result row.

    Its checkpoint (and ``.prev``, the one before) holds the model, Adam, the global RNG
    streams, the step, the loss history and the REINFORCE baseline, and, once evaluated,
    the result row. ``fresh``: delete it first."""
    l, k = CONFIGS[s.config]
    tc = train_config(s, estimator, dynamic)
    fname = estimator.replace(IWAE_SUFFIX, "_iwae")
    path = ckpt_dir / f"{fname}_seed{seed}_{run_tag(s, tc, seed)}.pt"
    if fresh:
        remove_checkpoint(path)
    saved = load_checkpoint(path)  # damaged: .prev with a warning, or CheckpointError
    if saved is not None and "result" in saved["extra"]:
        return saved["extra"]["result"]
    vae = VAEConfig(n_pixels=train.shape[1], n_latent=l, n_classes=k, hidden=tuple(s.hidden))
    state = train_init(vae, tc, seed)
    prior_seconds = saved["extra"].get("train_seconds", 0.0) if saved else 0.0
    start_step = saved["step"] if saved else 0
    with Timer() as t_train:
        fit(state, train, tc, s.steps, checkpoint=path, every=s.checkpoint_every,
            progress_bar=bar)
    model = state.model.eval()
    gen = torch.Generator().manual_seed(10_000 + seed)
    iw_test = test if s.test_subset is None else test[: s.test_subset]
    with Timer() as t_eval:
        test_nelbo = float(neg_elbo(model, test, s.elbo_samples, gen).mean())
        test_iwae = float(-iwae_bound(model, iw_test, s.iwae_samples, gen).mean())
    n_tail = min(100, len(state.history))
    steps_run = s.steps - start_step
    result = {
        "estimator": estimator, "seed": seed, "n_samples": tc.n_samples,
        "knobs": ({"baseline": f"EMA({tc.baseline_decay:g}) of past loss"}
                  if estimator == "reinforce" else _shown_knobs(tc.knobs)),
        "train_neg_elbo": sum(state.history[-n_tail:]) / n_tail,
        "test_neg_elbo": test_nelbo, "test_neg_iwae": test_iwae,
        "train_seconds": prior_seconds + t_train.seconds,
        "ms_per_step": 1e3 * t_train.seconds / steps_run if steps_run else float("nan"),
        "eval_seconds": t_eval.seconds, "curve": smooth_curve(state.history),
    }
    save_train_state(path, state, result=result, train_seconds=result["train_seconds"])
    return result


def _shown_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    """``knobs`` as a row shows them: RELAX's ``control=None`` default is replaced by the
    per-run control variate that training gives it (``with_state``)."""
    if "control" in knobs and knobs["control"] is None:
        return {**knobs, "control": "learned, one per run"}
    return knobs


def _pm(vals: list[float]) -> str:
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return f"{m:.2f}"
    return f"{m:.2f} ± {statistics.stdev(vals):.2f}"


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per estimator: mean ± std over seeds, sorted by the IWAE bound."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["estimator"], []).append(r)
    rows = []
    for name, rs in by.items():
        knobs = ", ".join(f"{k}={v}" for k, v in _shown_knobs(rs[0]["knobs"]).items()) or "-"
        rows.append({
            "estimator": name, "knobs": knobs, "S": rs[0]["n_samples"], "seeds": len(rs),
            "train −ELBO": _pm([r["train_neg_elbo"] for r in rs]),
            "test −ELBO (exact z)": _pm([r["test_neg_elbo"] for r in rs]),
            "test −IWAE": _pm([r["test_neg_iwae"] for r in rs]),
            "ms/step": round(statistics.fmean(r["ms_per_step"] for r in rs), 1),
            "_key": statistics.fmean(r["test_neg_iwae"] for r in rs),
        })
    rows.sort(key=lambda r: r.pop("_key"))
    return rows


def plot_curves(results: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Training −ELBO (moving average, mean over seeds) against steps, one line each."""
    plt = pyplot()

    by: dict[str, list[list[list[float]]]] = {}
    for r in results:
        by.setdefault(r["estimator"], []).append(r["curve"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab20").colors
    for i, (name, curves) in enumerate(sorted(by.items())):
        n = min(len(c) for c in curves)
        if n == 0:
            continue
        steps = [c[0] for c in curves[0][:n]]
        mean = [statistics.fmean(c[j][1] for c in curves) for j in range(n)]
        ax.plot(steps, mean, label=name, lw=1.2, color=colors[(2 * i) % 20 + (i >= 10)],
                ls="--" if name in ("reinforce", "rloo") else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("training −ELBO per datapoint (nats, moving avg 50)")
    ax.set_title(title, fontsize=9)
    finals = [statistics.fmean(c[-1][1] for c in cs) for cs in by.values() if cs[0]]
    if finals:
        ax.set_ylim(min(finals) - 2, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=["digits", "fashion"], default="digits")
    p.add_argument("--config", type=comma_list(choices=CONFIGS), default=None,
                   metavar="LxK,...", help="comma list of latent configs (default: both for "
                   "digits (quick: 20x10), 48x2 for fashion)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps")
    p.add_argument("--seeds", type=seed_list, default=None, metavar="S,...",
                   help="comma list of training seeds (default 0,1,2; quick and fashion: 0)")
    iwae_rows = [f"{n}{IWAE_SUFFIX}" for n in Settings.iwae_estimators]
    p.add_argument("--methods",
                   type=comma_list(choices=[*bench_methods(include_bounds=True), *iwae_rows]),
                   default=None, metavar="NAME,...",
                   help="comma list of estimators (default: all); those of the IWAE runs "
                        "(vimco, redge, reinmax, gumbel_hard) also train that objective; "
                        "'NAME (IWAE)' runs that row alone, e.g. --methods 'redge (IWAE)'")
    p.add_argument("--iwae-samples", type=positive_int, default=None,
                   help="samples of the importance-weighted bound")
    p.add_argument("--test-subset", type=positive_int, default=None,
                   help="first N test images for the IWAE bound")
    p.add_argument("--data-root", default=None, help="folder with Fashion-MNIST IDX files")
    p.add_argument("--checkpoints", type=Path, default=None, metavar="DIR",
                   help="folder of resumable training checkpoints (default: the user "
                        "cache's vae/); a rerun resumes unfinished runs and reuses finished ones")
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete the checkpoints of the runs asked for first")
    add_merge_argument(p)


# settings added after some results were published; only the runs they add (the IWAE
# objective's rows) read them, so results without them can take merged rows
_NEW_SETTINGS = ("iwae_train_samples", "iwae_estimators")


_MERGED_NOTE = re.compile(r" Merged: the rows of (.+?) come from a separate run .+?"
                          r"with the other rows'\.")


def merge_results(base: dict[str, Any], run: dict[str, Any], run_dir: str | Path
                  ) -> dict[str, Any]:
    """One cell's ``base`` results with the runs of ``run``'s estimators replaced by
    ``run``'s, the summary table recomputed and the header extended by what changed;
    refused (``MergeError``) unless the settings agree (estimator list and number of seeds
    aside: every row says how many seeds it has)."""
    skip = ("estimators", "seeds")
    check_same({k: v for k, v in base["settings"].items() if k not in skip},
               {k: v for k, v in run["settings"].items() if k not in skip}, "settings",
               only_new=_NEW_SETTINGS)
    new = list(dict.fromkeys(r["estimator"] for r in run["runs"]))
    old = list(dict.fromkeys(r["estimator"] for r in base["runs"]))
    runs = replace_rows(base["runs"], run["runs"], new)
    seeds = sorted({r["seed"] for r in run["runs"]})
    # an earlier merge's note goes when this run replaces every estimator it named
    header = _MERGED_NOTE.sub(
        lambda m: "" if set(m.group(1).split(", ")) <= set(new) else m.group(0), base["header"])
    for sentence in run["header"].split(". "):  # the IWAE rows' and skipped estimators' notes
        if sentence.startswith(("Rows 'NAME (IWAE)'", "Skipped")) and sentence not in header:
            header += " " + sentence.rstrip(".") + "."
    info = run.get("run_info", {})
    header += (f" Merged: the rows of {', '.join(new)} come from a separate run with seeds "
               f"{seeds} ({info.get('started', 'date not recorded')}; load average "
               f"{info.get('load_start', '?')} at its start, {info.get('load_end', '?')} at its "
               f"end, on {info.get('cpus', '?')} cores), so their ms/step are not comparable "
               f"with the other rows'.")
    settings = {**base["settings"], **{k: run["settings"][k] for k in _NEW_SETTINGS
                                       if k in run["settings"]},
                "estimators": list(dict.fromkeys(r["estimator"] for r in runs))}
    return {"settings": settings, "header": header, "rows": summarize(runs), "runs": runs,
            "provenance": provenance(base, old, run, new, run_dir)}


def _merge(args: argparse.Namespace, configs: list[str], suffix: str) -> dict[str, Any]:
    out = {}
    for config in configs:
        cell = f"{args.dataset}_{config}{suffix}"
        base, new = read_pair(args.out, args.merge_from, f"{cell}.json")
        res = merge_results(base, new, args.merge_from)
        table = markdown_table(res["rows"])
        print(f"\n{res['header']}\n\n{table}\n")
        l, k = CONFIGS[config]
        steps, n_seeds = res["settings"]["steps"], res["settings"]["seeds"]
        plot_curves(res["runs"], f"{args.dataset} {l}x{k}: {steps} steps, up to {n_seeds} "
                    "seed(s)", args.out / f"{cell}.png")
        (args.out / f"{cell}.md").write_text(f"{res['header']}\n\n{table}\n")
        write_json(args.out / f"{cell}.json", res)
        out[config] = res
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or 1)
    if getattr(args, "merge_from", None) is not None:
        default = ["48x2"] if args.dataset == "fashion" else \
            (["20x10"] if args.quick else ["20x10", "48x2"])
        return _merge(args, args.config or default, "_quick" if args.quick else "")
    s = defaults(args.dataset, args.quick)
    over = {"steps": args.steps, "seeds": len(args.seeds) if args.seeds else None,
            "iwae_samples": args.iwae_samples, "test_subset": args.test_subset}
    s = replace(s, **{k: v for k, v in over.items() if v is not None})
    names = args.methods or bench_methods()
    iwae_names = [f"{n}{IWAE_SUFFIX}" for n in s.iwae_estimators
                  if args.methods is None or n in args.methods
                  or f"{n}{IWAE_SUFFIX}" in args.methods]
    names = [n for n in names if n != "vimco" and not n.endswith(IWAE_SUFFIX)] + iwae_names
    ckpt_root = args.checkpoints if args.checkpoints is not None else cache_dir("vae")
    if args.dataset == "fashion":
        configs = args.config or ["48x2"]
    else:
        configs = args.config or (["20x10"] if args.quick else ["20x10", "48x2"])
    train, test, dynamic = load_data(args.dataset, args.data_root)
    suffix = "_quick" if args.quick else ""
    out: dict[str, Any] = {}
    info = run_info()
    for config in configs:
        cs = replace(s, config=config, estimators=list(names))
        cell = f"{args.dataset}_{config}{suffix}"
        ckpt_dir = ckpt_root / cell
        seeds = list(args.seeds) if args.seeds else list(range(cs.seeds))
        results = []
        bar = progress(total=cs.steps, desc=cell)
        l, k = CONFIGS[config]
        notes = [why for n in names if (why := unsupported(split_run(n)[0], 2, k))]
        for why in notes:
            print(f"skipped {why}")
        for name in names:
            if unsupported(split_run(name)[0], 2, k):
                continue
            for seed in seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                results.append(run_one(cs, name, seed, train, test, dynamic, ckpt_dir, bar,
                                       fresh=args.fresh))
        bar.close()
        rows = summarize(results)
        sub = "all" if cs.test_subset is None else f"first {cs.test_subset}"
        header = (
            f"Categorical VAE, {args.dataset} ({train.shape[0]} train / {test.shape[0]} test, "
            f"{'dynamic' if dynamic else 'fixed'} binarization), {l} latents x {k} classes, "
            f"MLP {train.shape[1]}-{'-'.join(map(str, cs.hidden))}-({l}x{k}), LeakyReLU; "
            f"Adam lr {cs.lr:g}, batch {cs.batch_size}, {cs.steps} steps, seeds {seeds}. "
            f"train −ELBO: mean of the last 100 steps' training loss (relaxed for "
            f"gumbel_soft); test −ELBO: {cs.elbo_samples} exact one-hot z per image, all test "
            f"images; test −IWAE: {cs.iwae_samples}-sample bound on {sub} test images. Nats "
            f"per image, mean ± std over seeds. S = samples of z per image and step. Rows "
            f"'NAME (IWAE)' train the {cs.iwae_train_samples}-sample IWAE bound instead of the "
            f"ELBO (their 'train −ELBO' column is the training −IWAE bound)."
            + "".join(f" Skipped {why}." for why in notes)
        )
        table = markdown_table(rows)
        print(f"\n{header}\n\n{table}\n")
        res_dir = args.out
        plot_curves(results, f"{args.dataset} {l}x{k}: {cs.steps} steps, "
                    f"{len(seeds)} seed(s)", res_dir / f"{cell}.png")
        (res_dir / f"{cell}.md").write_text(f"{header}\n\n{table}\n")
        out[config] = {"settings": cs, "header": header, "rows": rows, "runs": results,
                       "run_info": finish_info(dict(info))}
        write_json(res_dir / f"{cell}.json", out[config])
    return out
