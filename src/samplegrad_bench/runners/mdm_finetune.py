"""`samplegrad bench mdm-finetune`: reward finetuning of the digits masked diffusion model
(``--task digits``, the default, described here) and of the Sudoku infilling model
(``--task sudoku``: :mod:`samplegrad_bench.runners._mdm_sudoku`, files
``mdm_finetune_sudoku.{json,md}``, ``sudoku_grids.png``, ``sudoku_tradeoff.png``).

The pretrained MDM over binarized 8x8 digits (``final.pt`` of `samplegrad train-mdm --task
digits`; ``--quick``: a tiny stand-in trained here) is finetuned IN PLACE toward the reward
``R(x) = log p(target | x)`` of the cached digit classifier, with the path-KL penalty
``kl_weight * KL(path_theta || path_ref)`` to the pretrained model, by every method of
:mod:`samplegrad.discrete.finetune`:

- ``unrolled``: pathwise, autograd through all T unmasking steps, per pathwise estimator;
- ``truncated``: the same through the last K steps only (DRAKES-style truncation);
- ``queue``: the Implicit Diffusion queue (T populations, one batched call per iteration,
  the adjoint of the finished population);
- ``reinforce``: REINFORCE with a leave-one-out baseline (no estimator).

Per run (method, estimator, seed): the mean reward ``log p(target)``, ``P(class = target)``,
the path KL to the pretrained sampler and the diversity (mean pairwise Hamming distance / 64)
of ``eval_n`` exact samples after finetuning (before: the pretrained model, same samples
seed), the median wall time per theta step, the autograd graph of one theta step (``graph
KiB``: bytes saved for backward, weights excluded; queue and reinforce: one step's graph,
the most alive at once) and the method's state between steps (queue: the stored paths).
Results are written after every run to ``OUT/mdm_finetune.json`` (a rerun with the same
settings skips finished runs; ``--fresh`` reruns them), with a table, a sample grid
(``samples.png``, seed 0) and a plot (``tradeoff.png``).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from samplegrad.discrete import finetune as ft
from samplegrad.discrete import load_model
from samplegrad_bench._args import comma_list, nonneg_float, nonneg_int, positive_int
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    progress,
    pyplot,
    save_figure,
    saved_tensor_bytes,
    write_json,
)
from samplegrad_bench.estimators import default_knobs

METHODS = ("unrolled", "truncated", "queue", "reinforce")
ESTIMATORS = ("gumbel_soft", "gumbel_hard", "straight_through", "reinmax", "redge")
PATHWISE = tuple(m for m in METHODS if m != "reinforce")


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one run of the benchmark (saved with the results)."""

    methods: tuple[str, ...] = METHODS
    estimators: tuple[str, ...] = ESTIMATORS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_steps: int = 8
    truncate: int = 2
    pop_size: int = 16
    theta_steps: int = 40
    lr: float = 1e-3
    kl_weight: float = 0.05
    grad_clip: float = 1.0
    target_digit: int = 3
    eval_n: int = 128


def quick_config() -> BenchConfig:
    return BenchConfig(estimators=("gumbel_soft", "straight_through"), seeds=(0,), n_steps=4,
                       truncate=2, pop_size=4, theta_steps=3, eval_n=16)


def ft_config(cfg: Any, method: str, estimator: str, seed: int) -> ft.MDMFinetuneConfig:
    """The library config of one run; ``cfg`` is this runner's ``BenchConfig`` or the Sudoku
    runner's ``SudokuConfig`` (both have n_steps, pop_size, truncate, kl_weight, lr, grad_clip)."""
    knobs = {} if method == "reinforce" else default_knobs(estimator)
    return ft.MDMFinetuneConfig(
        n_steps=cfg.n_steps, pop_size=cfg.pop_size,
        estimator=estimator if method != "reinforce" else "gumbel_soft", knobs=knobs,
        truncate=cfg.truncate if method == "truncated" else None, kl_weight=cfg.kl_weight,
        lr=cfg.lr, grad_clip=cfg.grad_clip, seed=seed)


_FNS = {"unrolled": (ft.unrolled_init, ft.unrolled_step),
        "truncated": (ft.unrolled_init, ft.unrolled_step),
        "queue": (ft.finetune_init, ft.finetune_step),
        "reinforce": (ft.reinforce_init, ft.reinforce_step)}


def _reward_fn(classifier: torch.nn.Module, digit: int):
    from samplegrad_bench.tasks.rewards import digit_log_prob

    def reward(x: torch.Tensor) -> torch.Tensor:  # (N, 64, 2) one-hot / soft -> (N,)
        return digit_log_prob(classifier, x[..., 1], digit)

    return reward


@torch.no_grad()
def evaluate(model, ref_params, classifier, cfg: BenchConfig,
             seed: int) -> tuple[dict, torch.Tensor]:
    """Metrics of ``eval_n`` exact samples (fixed seed) and the images ``(eval_n, 64)``."""
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(10_000 + seed)
    start = torch.full((cfg.eval_n, 64), model.config.mask_id)
    path = ft.sample_path(model, params, start, cfg.n_steps, gen)
    img = path[-1][..., 1]
    logits = classifier(img)
    lp = torch.log_softmax(logits, -1)[:, cfg.target_digit]
    kl = ft.path_kl(model, params, ref_params, path)
    ham = torch.cdist(img, img, p=1)
    n = len(img)
    return ({"log p(target)": float(lp.mean()),
             "P(target)": float((logits.argmax(-1) == cfg.target_digit).float().mean()),
             "path KL": float(kl.mean()),
             "diversity": float(ham.sum() / (n * (n - 1)) / 64)}, img)


def _graph_kib(method: str, model, state, reward, fcfg: ft.MDMFinetuneConfig) -> float:
    """Bytes autograd saves for one theta step (weights excluded), as the docstring says."""
    params = dict(model.named_parameters())
    weights = list(model.parameters())
    start = state.start
    gen = torch.Generator().manual_seed(0)
    u = torch.rand((fcfg.n_steps, *start.shape), generator=gen)
    draw = ft.pathwise_draw(fcfg.estimator, gen, **fcfg.knobs)
    if method in ("unrolled", "truncated", "queue"):
        k = 1 if method == "queue" else fcfg.truncate
        with saved_tensor_bytes(exclude=weights) as m:
            loss, _ = ft.unrolled_loss(model, params, state.ref_params, start, u, reward, draw,
                                       kl_weight=fcfg.kl_weight, truncate=k)
        del loss
        return m["bytes"] / 1024
    path = ft.sample_path(model, params, start, fcfg.n_steps, gen)
    x = path[0]
    with saved_tensor_bytes(exclude=weights) as m, torch.enable_grad():
        logits = model(x)
        ref = torch.func.functional_call(model, state.ref_params, (x,))
        s = torch.log_softmax(logits, -1).sum() + ft._kl(logits, ref, model.config.mask_id).sum()
    del s
    return m["bytes"] / 1024


def run_one(method: str, estimator: str, seed: int, cfg: BenchConfig, ckpt: Path,
            classifier) -> tuple[dict, torch.Tensor, list[float]]:
    model = load_model(ckpt)
    torch.manual_seed(seed)
    fcfg = ft_config(cfg, method, estimator, seed)
    reward = _reward_fn(classifier, cfg.target_digit)
    init, step = _FNS[method]
    state = init(model, fcfg)
    times, curve = [], []
    for _ in range(cfg.theta_steps):
        with Timer() as t:
            state, info = step(state, model, reward, fcfg)
        times.append(t.seconds)
        curve.append(info["reward"])
    metrics, img = evaluate(model, state.ref_params, classifier, cfg, seed)
    state_kib = state.paths.numel() * state.paths.element_size() / 1024 \
        if method == "queue" else 0.0
    row = {"method": method, "estimator": "-" if method == "reinforce" else estimator,
           "seed": seed, **metrics,
           "ms/theta step": 1000 * statistics.median(times[1:] or times),
           "graph KiB": _graph_kib(method, model, state, reward, fcfg),
           "state KiB": state_kib}
    return row, img, curve


def _summary(rows: list[dict], base: dict) -> list[dict]:
    keys = ("log p(target)", "P(target)", "path KL", "diversity", "ms/theta step",
            "graph KiB", "state KiB")
    out = [{"method": "pretrained", "estimator": "-", "seeds": len({r["seed"] for r in rows}),
            **{k: base.get(k, 0.0) for k in keys}, "± log p": 0.0}]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["estimator"]), []).append(r)
    for (method, est), rs in groups.items():
        lp = [r["log p(target)"] for r in rs]
        out.append({"method": method, "estimator": est, "seeds": len(rs),
                    **{k: statistics.fmean(r[k] for r in rs) for k in keys},
                    "± log p": statistics.stdev(lp) if len(lp) > 1 else 0.0})
    return out


def _plot(summary: list[dict], curves: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    markers = {"pretrained": "*", "unrolled": "o", "truncated": "s", "queue": "^",
               "reinforce": "D"}
    for r in summary:
        axes[0].scatter(r["path KL"], r["log p(target)"], marker=markers[r["method"]], s=30)
        label = r["method"] if r["estimator"] == "-" else f"{r['method']}/{r['estimator']}"
        axes[0].annotate(label, (r["path KL"], r["log p(target)"]), fontsize=6)
    axes[0].set_xlabel("path KL to the pretrained sampler (nats)")
    axes[0].set_ylabel("log p(target | x) after finetuning")
    for name, c in curves.items():
        k = max(1, len(c) // 20)
        smooth = torch.tensor(c[: len(c) // k * k]).reshape(-1, k).mean(1)
        axes[1].plot((torch.arange(len(smooth)) + 1) * k, smooth, label=name, lw=1)
    axes[1].set_xlabel("theta step")
    axes[1].set_ylabel("training reward (seed 0)")
    axes[1].legend(fontsize=6, ncol=2)
    save_figure(fig, path, dpi=100)


def _plot_samples(samples: dict[str, torch.Tensor], path: Path, n: int = 10) -> None:
    from samplegrad_bench.runners.guidance import _plot_digits

    path.parent.mkdir(parents=True, exist_ok=True)
    n = min(n, *(len(v) for v in samples.values()))
    _plot_digits({k: v[:n].numpy() for k, v in samples.items()}, path, n=n)


def _same(a: dict, b: dict) -> bool:
    """Whether saved runs can be reused: the settings agree on everything but the lists that
    only select runs (methods, estimators, seeds)."""
    def strip(d: dict) -> dict:
        bench = {k: v for k, v in d.get("bench", {}).items()
                 if k not in ("methods", "estimators", "seeds")}
        return {**{k: v for k, v in d.items() if k not in ("bench", "estimator_knobs")},
                "bench": bench}
    import json

    return json.loads(json.dumps(strip(a))) == json.loads(json.dumps(strip(b)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("digits", "sudoku"), default="digits",
                   help="digits: the digits MDM, reward log p(3 | x); sudoku: the infilling "
                        "MDM (train-mdm --task sudoku-infill), reward -violations, evaluated "
                        "on held-out puzzles")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                   help="folder of digits/final.pt (sudoku: sudoku-infill/final.pt) from "
                        "`samplegrad train-mdm` (default: the cache's checkpoints/mdm; quick: "
                        "a tiny stand-in if that is missing)")
    p.add_argument("--methods", type=comma_list(choices=METHODS), default=None,
                   metavar="NAME,...", help="comma list of " + ",".join(METHODS))
    p.add_argument("--estimators", type=comma_list(choices=ft._pathwise_names()),
                   default=None, metavar="NAME,...",
                   help="pathwise estimators (default: " + ",".join(ESTIMATORS) + ")")
    p.add_argument("--seeds", type=comma_list(nonneg_int), default=None, metavar="S,...",
                   help="seeds (default 0,1,2)")
    p.add_argument("--theta-steps", type=positive_int, default=None, help="optimizer steps")
    p.add_argument("--n-steps", type=positive_int, default=None, help="unmasking steps T")
    p.add_argument("--truncate", type=positive_int, default=None, help="K of `truncated`")
    p.add_argument("--pop-size", type=positive_int, default=None, help="sequences per step")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--kl-weight", type=nonneg_float, default=None, help="path-KL weight")
    p.add_argument("--fresh", action="store_true", help="rerun the runs already saved")


def run(args: argparse.Namespace) -> dict:
    from samplegrad_bench.runners.guidance import _checkpoint
    from samplegrad_bench.tasks.rewards import digit_classifier

    torch.set_num_threads(args.threads or 1)
    if getattr(args, "task", "digits") == "sudoku":
        return run_sudoku(args)
    cfg = quick_config() if args.quick else BenchConfig()
    over = {"methods": args.methods, "estimators": args.estimators, "seeds": args.seeds,
            "theta_steps": args.theta_steps, "n_steps": args.n_steps,
            "truncate": args.truncate, "pop_size": args.pop_size, "lr": args.lr,
            "kl_weight": args.kl_weight}
    cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v
                          for k, v in over.items() if v is not None})
    if cfg.truncate > cfg.n_steps:
        from samplegrad_bench._args import UsageError

        raise UsageError(f"--truncate {cfg.truncate} must be <= --n-steps {cfg.n_steps}")
    ckpt = _checkpoint(args.checkpoint, "digits", "final", args.quick)
    classifier = digit_classifier()
    for p in classifier.parameters():
        p.requires_grad_(False)
    suffix = "_quick" if args.quick else ""
    out_path = args.out / f"mdm_finetune{suffix}.json"
    settings = {"bench": asdict(cfg), "checkpoint": str(ckpt),
                "threads": torch.get_num_threads(),
                "estimator_knobs": {e: default_knobs(e) for e in cfg.estimators}}
    saved: dict = {}
    if out_path.exists() and not args.fresh:
        import json

        old = json.loads(out_path.read_text())
        if _same(old.get("settings", {}), settings):
            saved = {(r["method"], r["estimator"], r["seed"]): r for r in old.get("rows", [])}
    print("settings:", settings)
    base_model = load_model(ckpt)
    base_ref = {k: p.detach().clone() for k, p in base_model.named_parameters()}
    base, base_img = evaluate(base_model, base_ref, classifier, cfg, cfg.seeds[0])
    base |= {"ms/theta step": 0.0, "graph KiB": 0.0, "state KiB": 0.0}
    jobs = [(m, e, s) for m in cfg.methods for e in (cfg.estimators if m in PATHWISE
                                                     else ("-",)) for s in cfg.seeds]
    rows: list[dict] = []
    samples = {"pretrained": base_img}
    curves: dict[str, list[float]] = {}
    bar = progress(jobs, desc="mdm-finetune", total=len(jobs))
    for method, est, seed in bar:
        bar.set_postfix_str(f"{method}/{est}/{seed}")
        if (method, est, seed) in saved:
            row = saved[(method, est, seed)]
        else:
            row, img, curve = run_one(method, est if est != "-" else "gumbel_soft", seed, cfg,
                                      ckpt, classifier)
            row["curve"] = curve
            if seed == cfg.seeds[0]:  # kept for the sample grid (also on a resumed run)
                row["samples"] = img[:10].round().int().tolist()
        rows.append(row)
        name = method if est == "-" else f"{method}/{est}"
        if seed == cfg.seeds[0]:
            curves[name] = row["curve"]
            samples[name] = torch.tensor(row["samples"], dtype=torch.float32)
        write_json(out_path, {"settings": settings, "base": base, "rows": rows,
                              "complete": False})
    summary = _summary(rows, base)
    write_json(out_path, {"settings": settings, "base": base, "rows": rows,
                          "summary": summary, "complete": True})
    table = markdown_table(summary, ["method", "estimator", "seeds", "log p(target)",
                                     "± log p", "P(target)", "path KL", "diversity",
                                     "ms/theta step", "graph KiB", "state KiB"], digits=3)
    print()
    print(table)
    (args.out / f"mdm_finetune{suffix}.md").write_text(table + "\n")
    if len(samples) > 1:
        _plot_samples(samples, args.out / f"samples{suffix}.png")
    if not args.quick:
        _plot(summary, curves, args.out / "tradeoff.png")
    return {"rows": rows, "summary": summary}


def _overrides(args: argparse.Namespace) -> dict:
    over = {"methods": args.methods, "estimators": args.estimators, "seeds": args.seeds,
            "theta_steps": args.theta_steps, "n_steps": args.n_steps,
            "truncate": args.truncate, "pop_size": args.pop_size, "lr": args.lr,
            "kl_weight": args.kl_weight}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in over.items() if v is not None}


def run_sudoku(args: argparse.Namespace) -> dict:
    """``--task sudoku``: every (method, estimator, seed) run on the infilling MDM, results
    written after each run (resumable as the digits task), table, grids and plot. Unlike
    the digits task, saved runs outside this invocation's selection (other methods,
    estimators or seeds, same settings otherwise) are kept in the results, so a selection
    can be run in several invocations."""
    import json

    from samplegrad.checkpoint import load_checkpoint
    from samplegrad_bench.runners import _mdm_sudoku as sk
    from samplegrad_bench.runners.guidance import _checkpoint

    cfg = replace(sk.quick_config() if args.quick else sk.SudokuConfig(), **_overrides(args))
    if cfg.truncate > cfg.n_steps:
        from samplegrad_bench._args import UsageError

        raise UsageError(f"--truncate {cfg.truncate} must be <= --n-steps {cfg.n_steps}")
    ckpt = _checkpoint(args.checkpoint, "sudoku-infill", "final", args.quick)
    model_metrics = load_checkpoint(ckpt.parent / "metrics.pt",
                                    check=lambda b: b["final"]) or {}
    pool, held, _ = sk.puzzles(cfg)
    suffix = "_quick" if args.quick else ""
    out_path = args.out / f"mdm_finetune_sudoku{suffix}.json"
    settings = {"task": "sudoku", "bench": asdict(cfg), "checkpoint": str(ckpt),
                "threads": torch.get_num_threads(),
                "estimator_knobs": {e: default_knobs(e) for e in cfg.estimators}}
    saved: dict = {}
    base = None
    if out_path.exists() and not args.fresh:
        old = json.loads(out_path.read_text())
        if _same(old.get("settings", {}), settings):
            saved = {(r["method"], r["estimator"], r["seed"]): r for r in old.get("rows", [])}
            base = old.get("base")  # the pretrained model's metrics (sampler seed 0)
    print("settings:", settings)
    print("pretrained model (train-mdm metrics):", model_metrics.get("final", "n/a"))
    if base is None:
        base_model = load_model(ckpt)
        base_ref = {k: p.detach().clone() for k, p in base_model.named_parameters()}
        with Timer() as t_base:
            base, base_grids = sk.evaluate(base_model, base_ref, cfg, held, 0)
        base |= {"ms/theta step": 0.0, "graph KiB": 0.0, "state KiB": 0.0,
                 "eval seconds": t_base.seconds, "grid0": base_grids[0].tolist()}
    jobs = [(m, e, s) for m in cfg.methods for e in (cfg.estimators if m in PATHWISE
                                                     else ("-",)) for s in cfg.seeds]
    curves: dict[str, list[float]] = {}
    rows = [r for key, r in saved.items() if key not in set(jobs)]  # other selections
    for r in rows:
        if r["seed"] == min(x["seed"] for x in saved.values()):
            name = r["method"] if r["estimator"] == "-" else f"{r['method']}/{r['estimator']}"
            curves[name] = r["curve"]
    grids = {"pretrained": torch.tensor(base["grid0"])}
    head = {"settings": settings, "model": model_metrics, "base": base}
    bar = progress(jobs, desc="mdm-finetune sudoku", total=len(jobs))
    for method, est, seed in bar:
        bar.set_postfix_str(f"{method}/{est}/{seed}")
        if (method, est, seed) in saved:
            row = saved[(method, est, seed)]
        else:
            row, g, curve = sk.run_one(method, est if est != "-" else "gumbel_soft", seed, cfg,
                                       ckpt, pool, held, _graph_kib)
            row["curve"] = curve
            row["grid0"] = g[0].tolist()
        rows.append(row)
        name = method if est == "-" else f"{method}/{est}"
        if seed == cfg.seeds[0]:
            curves[name] = row["curve"]
            grids[name] = torch.tensor(row["grid0"])
        write_json(out_path, {**head, "rows": rows, "complete": False})
    for r in rows:  # grids of the other selections' runs (any seed, for the sample plot)
        name = r["method"] if r["estimator"] == "-" else f"{r['method']}/{r['estimator']}"
        grids.setdefault(name, torch.tensor(r["grid0"]))
    summary = sk.summary(rows, base)
    write_json(out_path, {**head, "rows": rows, "summary": summary, "complete": True})
    table = markdown_table(summary, ["method", "estimator", "seeds", "solved", "± solved",
                                     "solved guided", "violations", "± violations",
                                     "violations guided", "path KL", "ms/theta step",
                                     "graph KiB", "state KiB"], digits=3)
    print()
    print(table)
    (args.out / f"mdm_finetune_sudoku{suffix}.md").write_text(table + "\n")
    best = max(summary[1:] or summary, key=lambda r: r["solved"])
    best_name = best["method"] if best["estimator"] == "-" \
        else f"{best['method']}/{best['estimator']}"
    sk.plot_grids(held[0], {k: v for k, v in grids.items() if k in ("pretrained", best_name)},
                  args.out / f"sudoku_grids{suffix}.png")
    if not args.quick:
        sk.plot(summary, curves, args.out / "sudoku_tradeoff.png")
    return {"rows": rows, "summary": summary}
