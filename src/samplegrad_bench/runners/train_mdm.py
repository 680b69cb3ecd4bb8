"""`samplegrad train-mdm`: train the masked discrete diffusion models used by `bench guidance`.

Two tasks: Sudoku solutions (``random_solutions``, 81 tokens, vocabulary 9 + [MASK]) and
binarized 8x8 digits (``load_digits("train", binarize=True)``, 64 tokens, vocabulary
2 + [MASK]); ``--task all`` trains both. A third, ``sudoku-infill`` (trained only when
named), is the larger clue-conditioned Sudoku model of `bench mdm-finetune --task sudoku`:
every training grid gets a random clue subset (fraction ~ U(0, 0.7)) that is never masked
nor scored, so the loss is the negative ELBO of the free cells given the clues; it is also
evaluated on held-out puzzles (infilling loss, fraction solved without guidance).
Checkpoints go to ``DIR/TASK/{weak,early,middle,final}.pt`` at fixed fractions of the run,
and ``last.pt`` every ``--ckpt-every`` steps and on Ctrl-C (the one before kept as
``last.pt.prev``); a rerun with the same settings resumes from ``last.pt`` (model, optimizer,
generator, losses) and writes exactly what an uninterrupted run writes (``seconds_this_run``
aside); ``--fresh`` deletes them and starts over.
``DIR`` is ``--checkpoint DIR``, by default the cache's ``checkpoints/mdm`` (``--quick``:
``checkpoints/mdm-quick``), where `bench guidance` looks. Each stage is evaluated (held-out
loss; Sudoku: validity of unconditional samples) and the metrics go to
``runs/train-mdm/train_mdm_TASK.json`` (``--publish``: ``docs/results/guidance/``) with a
loss-curve PNG.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from samplegrad.checkpoint import DeferredInterrupt, load_checkpoint, remove_checkpoint
from samplegrad.checkpoint import save_checkpoint as atomic_save
from samplegrad.discrete import (
    MDMConfig,
    MDMTrainConfig,
    load_train_state,
    masked_diffusion_loss,
    sample,
    save_train_state,
    train_init,
    train_step,
)
from samplegrad_bench._args import positive_int
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    progress,
    pyplot,
    save_figure,
    write_json,
)
from samplegrad_bench.paths import cache_dir
from samplegrad_bench.tasks.mdm_objectives import digit_tokens, sudoku_grid, sudoku_tokens

STAGES: dict[str, float] = {"weak": 0.03, "early": 0.2, "middle": 0.35, "final": 1.0}
TASKS = ("sudoku", "digits")  # --task all
EXTRA_TASKS = ("sudoku-infill",)  # trained only when named


@dataclass(frozen=True)
class TaskSpec:
    """Model, optimizer and data settings of one task."""

    model: MDMConfig
    train: MDMTrainConfig
    n_data: int  # Sudoku: number of random solutions (digits: the whole train split)


def task_spec(task: str, quick: bool = False) -> TaskSpec:
    """Default settings of ``task`` (``quick``: a tiny run for smoke tests)."""
    if task == "sudoku":
        spec = TaskSpec(MDMConfig(9, 81, width=96, depth=3, heads=4, mlp_ratio=2),
                        MDMTrainConfig(steps=900, batch_size=64, lr=2e-3, warmup=100), 8000)
    elif task == "digits":
        spec = TaskSpec(MDMConfig(2, 64, width=64, depth=2, heads=4, mlp_ratio=2),
                        MDMTrainConfig(steps=800, batch_size=64, lr=2e-3, warmup=50), 0)
    elif task == "sudoku-infill":
        if quick:  # a tiny model, trained in seconds (the quick paths of the benches)
            return TaskSpec(MDMConfig(9, 81, width=32, depth=1, heads=2, mlp_ratio=2),
                            MDMTrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5), 400)
        spec = TaskSpec(MDMConfig(9, 81, width=128, depth=4, heads=4, mlp_ratio=2),
                        MDMTrainConfig(steps=1000, batch_size=64, lr=2e-3, warmup=60), 6000)
    else:
        raise ValueError(f"task must be one of {(*TASKS, *EXTRA_TASKS)}; got {task!r}")
    if quick:
        spec = replace(spec, train=replace(spec.train, steps=40, warmup=5),
                       n_data=min(spec.n_data, 400))
    return spec


def task_data(task: str, spec: TaskSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train tokens, held-out tokens) of ``task``."""
    if task in ("sudoku", "sudoku-infill"):
        from samplegrad_bench.tasks.sudoku import random_solutions

        return (sudoku_tokens(random_solutions(spec.n_data, seed)),
                sudoku_tokens(random_solutions(256, seed + 10_000)))
    from samplegrad_bench.data import load_digits

    x_train, _ = load_digits("train", binarize=True)
    x_test, _ = load_digits("test", binarize=True)
    return digit_tokens(x_train), digit_tokens(x_test)


def heldout_puzzles(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out easy puzzles of the infilling evaluation: ``(puzzles, solutions)`` ``(n, 81)``
    (seed ``HELDOUT_PUZZLE_SEED``, never trained or finetuned on; cached)."""
    from samplegrad_bench.tasks.mdm_objectives import HELDOUT_PUZZLE_SEED
    from samplegrad_bench.tasks.sudoku import puzzle_set

    return puzzle_set(n, HELDOUT_PUZZLE_SEED, "easy")


@torch.no_grad()
def evaluate_infill(model: torch.nn.Module, puzzles: torch.Tensor, solutions: torch.Tensor,
                    seed: int, n_steps: int = 16) -> dict:
    """Infilling metrics on held-out puzzles: negative ELBO per free cell given the clues
    (4 passes), and the fraction solved by the plain sampler (``n_steps``, no guidance)."""
    from samplegrad_bench.tasks.sudoku import is_solved

    gen = torch.Generator().manual_seed(seed)
    sol, keep = sudoku_tokens(solutions), puzzles > 0
    nelbo = sum(float(masked_diffusion_loss(model, sol, generator=gen, keep=keep))
                for _ in range(4))
    x = sample(model, n_steps, given=sudoku_tokens(puzzles), generator=gen)
    return {"heldout_infill_nelbo_per_free_token": nelbo / 4,
            "puzzles_solved_unguided": float(is_solved(sudoku_grid(x), puzzles).float().mean())}


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: str, held_out: torch.Tensor, seed: int) -> dict:
    """Held-out negative ELBO per token (nats, 4 passes with fixed masks); for Sudoku also
    the validity of 64 unconditional samples (20 steps); ``sudoku-infill`` also
    :func:`evaluate_infill` on 64 held-out easy puzzles."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    nelbo = sum(float(masked_diffusion_loss(model, held_out, generator=gen)) for _ in range(4))
    out = {"heldout_nelbo_per_token": nelbo / 4}
    if task in ("sudoku", "sudoku-infill"):
        from samplegrad_bench.tasks.sudoku import violations

        x = sample(model, 20, batch_size=64, generator=gen)
        v = violations(sudoku_grid(x)).float()
        out |= {"uncond_valid_rate": float((v == 0).float().mean()),
                "uncond_mean_violations": float(v.mean())}
    if task == "sudoku-infill":
        out |= evaluate_infill(model, *heldout_puzzles(), seed)
    return out


def default_ckpt_dir(quick: bool = False) -> Path:
    """Where `train-mdm` writes and `bench guidance` looks: the cache's ``checkpoints/mdm``
    (``quick``: ``checkpoints/mdm-quick``)."""
    return cache_dir("checkpoints") / ("mdm-quick" if quick else "mdm")


def _metrics_check(blob: object) -> None:
    if not isinstance(blob, dict):
        raise TypeError(f"a {type(blob).__name__}, not a dict of stage metrics")


def train_task(task: str, ckpt_dir: Path, *, quick: bool = False, seed: int = 0,
               steps: int | None = None, ckpt_every: int = 100, fresh: bool = False) -> dict:
    """Train (or resume) ``task``; write stage checkpoints; return settings and metrics.

    ``last.pt`` (and ``last.pt.prev``, the one before) holds the model, the optimizer, the
    minibatch/mask generator, the step and every logged loss; ``metrics.pt`` the stage
    metrics. Ctrl-C saves ``last.pt`` at the last finished step before stopping. ``fresh``:
    delete this task's checkpoints and metrics first."""
    spec = task_spec(task, quick)
    if steps is not None:
        spec = replace(spec, train=replace(spec.train, steps=steps))
    cfg = spec.train
    folder = Path(ckpt_dir) / task
    last = folder / "last.pt"
    metrics_path = folder / "metrics.pt"
    if fresh:
        for f in (last, metrics_path, *(folder / f"{name}.pt" for name in STAGES)):
            remove_checkpoint(f)
    data, held_out = task_data(task, spec, seed)
    clues = None
    if task == "sudoku-infill":
        from samplegrad_bench.tasks.mdm_objectives import sudoku_infill_clues as clues
    settings = {"model_config": asdict(spec.model), "train_config": asdict(cfg), "seed": seed}
    # damaged: last.pt.prev with a warning, or CheckpointError
    saved = load_checkpoint(last, check=lambda b: (b["model_config"], b["train_config"],
                                                   b["model"], b["step"], b["losses"]))
    same = saved is not None and {"model_config": saved.get("model_config"),
                                  "train_config": saved.get("train_config"),
                                  # (files from before the seed was saved: trusted)
                                  "seed": saved.get("extra", {}).get("seed", seed)} == settings
    if same:
        state = load_train_state(last, cfg)
        print(f"[train-mdm {task}] resuming from {last} at step {state.step}")
    else:
        if saved is not None:
            print(f"[train-mdm {task}] {last} has other settings; starting over")
        state = train_init(spec.model, cfg, seed)
    metrics: dict = (load_checkpoint(metrics_path, check=_metrics_check) or {}) if same else {}
    stage_at = {name: max(1, round(frac * cfg.steps)) for name, frac in STAGES.items()}
    bar = progress(range(state.step, cfg.steps), desc=f"train-mdm {task}", total=cfg.steps,
                   initial=state.step)
    with Timer() as timer, DeferredInterrupt() as stop:
        for _ in bar:
            state, info = (train_step(state, data, cfg) if clues is None
                           else train_step(state, data, cfg, clues=clues))
            bar.set_postfix(loss=f"{info['loss']:.3f}")
            for name, at in stage_at.items():
                if state.step == at:
                    metrics[name] = {"step": at, **evaluate(state.model, task, held_out, seed)}
                    save_train_state(folder / f"{name}.pt", state, cfg, {"stage": name},
                                     keep_previous=False)  # a result, not a resume point
                    atomic_save(metrics_path, metrics)
            if state.step % ckpt_every == 0 or state.step == cfg.steps or stop.requested:
                save_train_state(last, state, cfg, {"seed": seed})
            stop.raise_if_requested()
        for name in STAGES:  # stages saved by an earlier run but not evaluated yet
            if name not in metrics and (folder / f"{name}.pt").exists():
                blob = load_train_state(folder / f"{name}.pt")
                metrics[name] = {"step": blob.step, **evaluate(blob.model, task, held_out, seed)}
                atomic_save(metrics_path, metrics)
    return {"task": task, "model_config": asdict(spec.model), "train_config": asdict(cfg),
            "n_data": len(data), "seed": seed, "checkpoints": str(folder),
            "seconds_this_run": timer.seconds, "stages": metrics,
            "losses": state.losses}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=(*TASKS, *EXTRA_TASKS, "all"), default="all",
                   help="model to train (all: " + ", ".join(TASKS) + ")")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default per task)")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                   help="checkpoint folder, holding TASK/STAGE.pt (default: the cache's "
                        "checkpoints/mdm; quick: checkpoints/mdm-quick)")
    p.add_argument("--ckpt-every", type=positive_int, default=100,
                   help="steps between resumable checkpoints (TASK/last.pt; the one before is "
                        "kept as last.pt.prev); a rerun resumes from them")
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete the task's last.pt, stage checkpoints and metrics "
                        "first")


def _plot_losses(out_dir: Path, path: Path) -> None:
    """Loss curves of every task whose ``train_mdm_TASK.json`` exists in ``out_dir``."""
    import json

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for task in (*TASKS, *EXTRA_TASKS):
        f = out_dir / f"train_mdm_{task}.json"
        if not f.exists():
            continue
        losses = torch.tensor(json.loads(f.read_text())["losses_every_10"])
        k = max(1, len(losses) // 50)
        smooth = losses[: len(losses) // k * k].reshape(-1, k).mean(1)
        ax.plot((torch.arange(len(smooth)) * k + k) * 10, smooth, label=task)
    ax.set_xlabel("step")
    ax.set_ylabel("masked-diffusion loss (nats/token)")
    ax.legend()
    save_figure(fig, path, dpi=100)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or 1)
    ckpt_dir = args.checkpoint or default_ckpt_dir(args.quick)
    tasks = TASKS if args.task == "all" else (args.task,)
    results = [train_task(t, ckpt_dir, quick=args.quick, seed=args.seed, steps=args.steps,
                          ckpt_every=args.ckpt_every, fresh=args.fresh) for t in tasks]
    out_dir = args.out
    rows = []
    for r in results:
        print(f"\n{r['task']}: model {r['model_config']}\ntraining {r['train_config']}, "
              f"{r['n_data']} training sequences")
        for name, m in r["stages"].items():
            rows.append({"task": r["task"], "stage": name, **m})
        slim = {k: v for k, v in r.items() if k != "losses"}
        slim["losses_every_10"] = r["losses"][::10]
        suffix = "_quick" if args.quick else ""
        write_json(out_dir / f"train_mdm_{r['task']}{suffix}.json", slim)
    print()
    print(markdown_table(rows))
    if not args.quick:
        _plot_losses(out_dir, out_dir / "train_mdm_losses.png")
    return {"rows": rows}
