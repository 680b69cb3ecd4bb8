"""The Sudoku task of `bench mdm-finetune` (``--task sudoku``).

The clue-conditioned infilling MDM (``final.pt`` of `samplegrad train-mdm --task
sudoku-infill`; ``--quick``: a tiny stand-in trained here in seconds) is finetuned IN PLACE
toward ``R(x) = -violations(x)`` (relaxed on soft tokens by ``soft_violations``, exact on
one-hot ones), with the path-KL penalty to the pretrained model, by every method of
:mod:`samplegrad.discrete.finetune`. Every theta step starts its ``pop_size`` paths from the
clues of puzzles drawn from a finetuning pool (``pool=``; seed ``FINETUNE_PUZZLE_SEED``);
evaluation is on held-out puzzles (seed ``HELDOUT_PUZZLE_SEED``), never trained or finetuned
on: the fraction solved by the plain sampler and with the reward guidance of
:mod:`samplegrad.discrete.guidance` (ReDGE, as in `bench guidance`), the mean violation
count and the path KL to the pretrained sampler, before (the pretrained model) and after.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from samplegrad.discrete import GuidanceConfig, load_model, make_guide, sample
from samplegrad.discrete import finetune as ft
from samplegrad_bench._common import Timer, pyplot
from samplegrad_bench.runners.mdm_finetune import ft_config
from samplegrad_bench.tasks.mdm_objectives import (
    FINETUNE_PUZZLE_SEED,
    HELDOUT_PUZZLE_SEED,
    sudoku_grid,
    sudoku_objective,
    sudoku_reward,
    sudoku_tokens,
)

METHODS = ("unrolled", "truncated", "queue", "reinforce")
ESTIMATORS = ("redge", "gumbel_soft")
KEYS = ("solved", "solved guided", "violations", "violations guided", "path KL",
        "ms/theta step", "graph KiB", "state KiB")


@dataclass(frozen=True)
class SudokuConfig:
    """Settings of the Sudoku runs (saved with the results)."""

    methods: tuple[str, ...] = METHODS
    estimators: tuple[str, ...] = ESTIMATORS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_steps: int = 8
    truncate: int = 2
    pop_size: int = 8
    theta_steps: int = 20
    lr: float = 5e-4
    kl_weight: float = 0.1
    grad_clip: float = 1.0
    n_pool: int = 256  # finetuning puzzles (easy, 40 clues)
    eval_n: int = 64  # held-out puzzles (easy)
    guide_steps: int = 10  # Adam steps of the guidance per sampler step (ReDGE, 4 samples)
    guide_kl_weight: float = 0.05


def quick_config() -> SudokuConfig:
    return SudokuConfig(estimators=("redge",), seeds=(0,), n_steps=4, truncate=2, pop_size=4,
                        theta_steps=3, n_pool=8, eval_n=8, guide_steps=2)


def puzzles(cfg: SudokuConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(finetuning pool (n_pool, 81), held-out puzzles (eval_n, 81), their solutions)``:
    easy puzzles from two seeds (cached in the user cache)."""
    from samplegrad_bench.tasks.sudoku import puzzle_set

    pool, _ = puzzle_set(cfg.n_pool, FINETUNE_PUZZLE_SEED, "easy")
    held, sol = puzzle_set(cfg.eval_n, HELDOUT_PUZZLE_SEED, "easy")
    return pool, held, sol


@torch.no_grad()
def evaluate(model, ref_params, cfg: SudokuConfig, held: torch.Tensor,
             seed: int) -> tuple[dict, torch.Tensor]:
    """Metrics on the held-out puzzles (fixed sampler seed) and the unguided grids."""
    from samplegrad_bench.tasks.sudoku import is_solved, violations

    params = dict(model.named_parameters())
    given = sudoku_tokens(held)
    gen = torch.Generator().manual_seed(10_000 + seed)
    path = ft.sample_path(model, params, given, cfg.n_steps, gen)
    grids = sudoku_grid(path[-1][..., :9].argmax(-1))
    kl = ft.path_kl(model, params, ref_params, path)
    gcfg = GuidanceConfig("redge", 4, cfg.guide_steps, 0.5, cfg.guide_kl_weight)
    gen = torch.Generator().manual_seed(20_000 + seed)
    torch.manual_seed(20_000 + seed)  # the estimator's own draws
    guided = sudoku_grid(sample(model, cfg.n_steps, given=given, generator=gen,
                                guide=make_guide(sudoku_objective, gcfg)))
    return ({"solved": float(is_solved(grids, held).float().mean()),
             "solved guided": float(is_solved(guided, held).float().mean()),
             "violations": float(violations(grids).float().mean()),
             "violations guided": float(violations(guided).float().mean()),
             "path KL": float(kl.mean())}, grids)


def run_one(method: str, estimator: str, seed: int, cfg: SudokuConfig, ckpt: Path,
            pool: torch.Tensor, held: torch.Tensor,
            graph_kib) -> tuple[dict, torch.Tensor, list[float]]:
    """Finetune a fresh copy of the checkpoint; ``graph_kib`` is the digits runner's
    memory probe (method, model, state, reward, ft config) -> KiB."""
    model = load_model(ckpt)
    torch.manual_seed(seed)
    fcfg = ft_config(cfg, method, estimator, seed)
    init, step = {"unrolled": (ft.unrolled_init, ft.unrolled_step),
                  "truncated": (ft.unrolled_init, ft.unrolled_step),
                  "queue": (ft.finetune_init, ft.finetune_step),
                  "reinforce": (ft.reinforce_init, ft.reinforce_step)}[method]
    state = init(model, fcfg, pool=sudoku_tokens(pool))
    times, curve = [], []
    for _ in range(cfg.theta_steps):
        with Timer() as t:
            state, info = step(state, model, sudoku_reward, fcfg)
        times.append(t.seconds)
        curve.append(info["reward"])
    metrics, grids = evaluate(model, state.ref_params, cfg, held, seed)
    state_kib = state.paths.numel() * state.paths.element_size() / 1024 \
        if method == "queue" else 0.0
    row = {"method": method, "estimator": "-" if method == "reinforce" else estimator,
           "seed": seed, **metrics,
           "ms/theta step": 1000 * statistics.median(times[1:] or times),
           "graph KiB": graph_kib(method, model, state, sudoku_reward, fcfg),
           "state KiB": state_kib, "load average": os.getloadavg()[0]}
    return row, grids, curve


def summary(rows: list[dict], base: dict) -> list[dict]:
    """Mean over seeds per (method, estimator), with the spread (standard deviation over
    seeds) of the solve rate and of the violation count."""
    out = [{"method": "pretrained", "estimator": "-", "seeds": 1,
            **{k: base.get(k, 0.0) for k in KEYS}, "± solved": 0.0, "± violations": 0.0}]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["estimator"]), []).append(r)
    for (method, est), rs in groups.items():
        sd = {}
        for k in ("solved", "violations"):
            v = [r[k] for r in rs]
            sd[f"± {k}"] = statistics.stdev(v) if len(v) > 1 else 0.0
        out.append({"method": method, "estimator": est, "seeds": len(rs),
                    **{k: statistics.fmean(r[k] for r in rs) for k in KEYS}, **sd})
    return out


def plot(summary_rows: list[dict], curves: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()

    from samplegrad_bench._common import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in summary_rows:
        label = r["method"] if r["estimator"] == "-" else f"{r['method']}/{r['estimator']}"
        axes[0].scatter(r["path KL"], r["violations"], s=25)
        axes[0].annotate(label, (r["path KL"], r["violations"]), fontsize=6)
    axes[0].set_xlabel("path KL to the pretrained sampler (nats, held-out puzzles)")
    axes[0].set_ylabel("mean violations, held-out puzzles (no guidance)")
    for name, c in curves.items():
        k = max(1, len(c) // 15)
        smooth = torch.tensor(c[: len(c) // k * k]).reshape(-1, k).mean(1)
        axes[1].plot((torch.arange(len(smooth)) + 1) * k, smooth, label=name, lw=1)
    axes[1].set_xlabel("theta step")
    axes[1].set_ylabel("training reward -violations (seed 0)")
    axes[1].legend(fontsize=6, ncol=2)
    save_figure(fig, path, dpi=100)


def plot_grids(puzzle: torch.Tensor, grids: dict[str, torch.Tensor], path: Path) -> None:
    """One held-out puzzle as filled in by each model (clues bold, conflicts red)."""
    from samplegrad_bench.runners.guidance import _plot_sudoku

    path.parent.mkdir(parents=True, exist_ok=True)
    _plot_sudoku(puzzle, grids, path)
