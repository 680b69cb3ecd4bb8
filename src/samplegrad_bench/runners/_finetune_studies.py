"""The two studies of `bench finetune --study ...` (path memory, stale paths).

``--study memory``: four ways to keep what the adjoint needs, on the digit DDPM's
architecture (``EpsMLP`` 64-d, width 256, 3 blocks; the trained weights when present, the
architecture is what matters), the brightness reward, ``N`` samples per theta step:
``full`` (the queue, ``path_memory="full"``), ``recompute`` (``path_memory="recompute"``),
``checkpoint`` (recompute keeping ``ceil(sqrt T)`` states and regenerating each segment, noise
included, from saved generator states; written here only) and ``unrolled`` (the baseline).
Per T and design: CPU and wall time per theta step (median of ``--reps``, round robin over
the designs in one process), tensor bytes (state kept between steps, the path or checkpoints
alive during the step, the largest autograd graph, weights excluded) and, with ``--rss``, the
peak RSS growth of a fresh process running 3 theta steps. Files: ``mem.json`` (bytes, wall
time, RSS), ``cputime.json`` (CPU time), ``mem.md`` (the table), ``mem.png``.

``--study stale``: finetuning toward log p(digit) with the methods ``full`` (the queue),
``recompute``, ``unrolled`` and ``delayK`` (a fresh path sampled with the theta of K steps
before, the adjoint at the current theta), over a grid of Adam learning rates and seeds
(the seed sets the sampler noise; model, classifier and evaluation noise are shared),
evaluated every few theta steps on fixed noise. One JSON line per run in
``stale_T{T}.jsonl`` (appended after every run: a rerun skips the runs already there, so
several grids can share a file), then the table ``stale_T{T}.md`` and ``stale_T{T}.png``
over every run in the file.

Files go to ``OUT/studies/`` (``_quick`` in the names with ``--quick``);
``--from-results`` rebuilds the tables and plots from the raw files there without running.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from samplegrad.diffusion import (
    EpsMLP,
    SamplerSchedule,
    draw_noise,
    linear_alpha_bars,
    sample_path,
    sampling_schedule,
)
from samplegrad.diffusion.ddpm import step_mean
from samplegrad.implicit.finetune import (
    FinetuneConfig,
    adjoint_grad,
    adjoint_step,
    finetune_init,
    finetune_step,
    unrolled_init,
    unrolled_loss,
    unrolled_step,
)
from samplegrad_bench._args import MissingInputError, UsageError
from samplegrad_bench._common import progress, pyplot, save_figure, saved_tensor_bytes, write_json
from samplegrad_bench.data import load_digits
from samplegrad_bench.runners.finetune import (
    _STUDY_NAMES,
    _status_kib,
    evaluate,
    load_or_train,
    make_rewards,
    to_unit,
)
from samplegrad_bench.runners.train_ddpm import default_weights, load_ddpm
from samplegrad_bench.tasks.rewards import brightness, digit_classifier

DESIGNS = _STUDY_NAMES["memory"]  # full, recompute, checkpoint, unrolled
STALE_METHODS = _STUDY_NAMES["stale"]  # full, recompute, unrolled; and delayK, K >= 1
_DIM = 64  # 8x8 digits
_KL = 3e-3  # path-KL weight of the memory study
_DELAY = re.compile(r"delay([1-9]\d*)")
RewardFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class MemorySettings:
    """Settings of `--study memory`."""

    n_steps: tuple[int, ...] = (25, 50, 100)
    reps: int = 3  # timed theta steps per design (median), after one warm-up step
    pop_size: int = 16
    rss: bool = True
    designs: tuple[str, ...] = DESIGNS


@dataclass(frozen=True)
class StaleSettings:
    """Settings of `--study stale` (the grid is methods x lrs x seeds, per T)."""

    n_steps: tuple[int, ...] = (10,)
    methods: tuple[str, ...] = STALE_METHODS
    lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4)
    seeds: tuple[int, ...] = (0, 1, 2)
    kl_weight: float = 3e-3
    theta_steps: int = 60
    pop_size: int = 16
    eval_n: int = 128
    eval_every: int = 10
    digit: int = 3


def _suffix(quick: bool) -> str:
    return "_quick" if quick else ""


def _check_methods(methods: Sequence[str], allowed: Sequence[str], study: str,
                   delays: bool = False) -> None:
    bad = [m for m in methods if m not in allowed and not (delays and _DELAY.fullmatch(m))]
    if bad:
        extra = ",delayK" if delays else ""
        raise UsageError(f"--methods: {','.join(bad)} not in --study {study}; choose from "
                         f"{','.join(allowed)}{extra}")


def _apply_grads(optimizer: torch.optim.Optimizer, params: dict[str, Tensor],
                 grads: dict[str, Tensor]) -> float:
    """One optimizer step with the given loss gradients; returns their global norm."""
    for k, p in params.items():
        p.grad = grads[k].detach()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                 for g in grads.values()]))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# ---------------------------------------------------------------- memory study
def _brightness(x: Tensor) -> Tensor:
    return brightness(to_unit(x).clamp(0.0, 1.0))


def _memory_model(weights: str | None) -> tuple[nn.Module, Tensor]:
    """The digit DDPM (``weights``) or, without weights, its architecture untrained (seed 0)."""
    if weights is not None:
        model, alpha_bars, _ = load_ddpm(Path(weights))
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = EpsMLP(dim=_DIM, hidden=256, n_blocks=3)
        alpha_bars = linear_alpha_bars(1000)
    return model.requires_grad_(True), alpha_bars


class _Checkpointed:
    """The ``checkpoint`` design: ``ceil(sqrt T)`` saved states per path and the generator
    state at each, every segment regenerated (noise included) before its adjoint steps."""

    def __init__(self, model: nn.Module, cfg: FinetuneConfig) -> None:
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.ref = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.peak_states = 0  # most (N, d) states alive at once in the last step

    def grad(self, model: nn.Module, sched: SamplerSchedule, n: int,
             kl_weight: float) -> dict[str, Tensor]:
        """Loss gradient along a fresh path (equal to ``recompute``'s on the same noise)."""
        t_total = sched.n_steps
        every = max(1, math.ceil(math.sqrt(t_total)))
        params = dict(model.named_parameters())

        def draw(gen: torch.Generator) -> Tensor:
            return torch.randn(n, _DIM, generator=gen, device="cpu")

        saved: dict[int, tuple[Tensor, Tensor]] = {}
        with torch.no_grad():
            x = draw(self.generator)
            for j in reversed(range(t_total)):
                if (j + 1) % every == 0 or j + 1 == t_total:
                    saved[j + 1] = (x, self.generator.get_state())
                x = step_mean(model, x, j, sched) + sched.sigma[j] * draw(self.generator)
        x0 = x.requires_grad_(True)
        with torch.enable_grad():
            (a,) = torch.autograd.grad(_brightness(x0).sum() / n, x0)
        acc = [torch.zeros_like(p) for p in params.values()]
        low, self.peak_states = 0, len(saved)
        for top in sorted(saved):
            x, state = saved[top]
            gen = torch.Generator(device="cpu").set_state(state)
            segment = {top: x}
            with torch.no_grad():
                for j in range(top - 1, low, -1):  # x_{top-1} .. x_{low+1}
                    x = step_mean(model, x, j, sched) + sched.sigma[j] * draw(gen)
                    segment[j] = x
            self.peak_states = max(self.peak_states, len(saved) + len(segment))
            for j in range(low, top):
                a, gp, _ = adjoint_step(model, params, self.ref, segment[j + 1], j, a, sched,
                                        kl_weight / n)
                for b, g in zip(acc, gp):
                    b.add_(g)
            low = top
        return {k: -g for k, g in zip(params, acc)}


class _Design:
    """One design's theta step on its own model."""

    def __init__(self, design: str, model: nn.Module, sched: SamplerSchedule, n: int) -> None:
        self.design, self.model, self.sched = design, model, sched
        self.cfg = FinetuneConfig(pop_size=n, lr=1e-5, kl_weight=_KL, path_memory=(
            "recompute" if design == "recompute" else "full"))
        if design in ("full", "recompute"):
            self.state = finetune_init(model, sched, self.cfg, _DIM)
        elif design == "unrolled":
            self.state = unrolled_init(model, self.cfg, _DIM)
        else:
            self.state = _Checkpointed(model, self.cfg)

    def step(self) -> None:
        if self.design in ("full", "recompute"):
            self.state, _ = finetune_step(self.state, self.model, self.sched, _brightness,
                                          self.cfg)
        elif self.design == "unrolled":
            self.state, _ = unrolled_step(self.state, self.model, self.sched, _brightness,
                                          self.cfg)
        else:
            params = dict(self.model.named_parameters())
            grads = self.state.grad(self.model, self.sched, self.cfg.pop_size,
                                    self.cfg.kl_weight)
            _apply_grads(self.state.optimizer, params, grads)


def _tensor_bytes(run: _Design) -> tuple[int, int, int]:
    """(state between steps, path or checkpoints in the step, largest graph) bytes."""
    model, sched, n = run.model, run.sched, run.cfg.pop_size
    t_total, f = sched.n_steps, 4
    params = dict(model.named_parameters())
    ref = {k: v.detach().clone() for k, v in params.items()}
    weights = [*params.values(), *ref.values()]
    one_path = (t_total + 1) * n * _DIM * f
    if run.design == "unrolled":
        noise = torch.randn(t_total + 1, n, _DIM, device="cpu")
        with saved_tensor_bytes(exclude=[*weights, noise]) as m:
            loss, _ = unrolled_loss(model, params, ref, noise, sched, _brightness, _KL)
        del loss
        return one_path, 0, m["bytes"]
    x = torch.randn(n, _DIM, device="cpu")
    a = torch.ones(n, _DIM, device="cpu") / n
    graph = 0
    for j in range(t_total):
        with saved_tensor_bytes(exclude=[*weights, x]) as m:
            adjoint_step(model, params, ref, x, j, a, sched, _KL / n)
        graph = max(graph, m["bytes"])
    if run.design in ("full", "recompute"):  # the state's stored paths: none for recompute
        return run.state.paths.numel() * f, one_path if run.design == "recompute" else 0, graph
    return 0, run.state.peak_states * n * _DIM * f, graph


def _rss_worker(q: mp.Queue, design: str, t_total: int, weights: str | None, n: int) -> None:
    torch.set_num_threads(1)
    model, alpha_bars = _memory_model(weights)
    warm = _Design(design, model, sampling_schedule(alpha_bars, 1), n)
    warm.step()  # lazy library initialization is not the design's memory
    warm.step()
    try:  # reset the peak (VmHWM) so that only the steps below count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _status_kib("VmRSS")
    run = _Design(design, model, sampling_schedule(alpha_bars, t_total), n)
    for _ in range(3):
        run.step()
    q.put((_status_kib("VmHWM") - before) / 1024)


def _peak_rss(design: str, t_total: int, weights: str | None, n: int) -> float:
    """Peak RSS growth (MiB) of 3 theta steps of ``design`` in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_rss_worker, args=(q, design, t_total, weights, n))
    p.start()
    out = q.get()
    p.join()
    return out


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def measure_t(t_total: int, s: MemorySettings, weights: str | None) -> tuple[list, list]:
    """Rows of ``mem.json`` and of ``cputime.json`` for one T, every design."""
    runs = {}
    for d in s.designs:
        model, alpha_bars = _memory_model(weights)
        runs[d] = _Design(d, model, sampling_schedule(alpha_bars, t_total), s.pop_size)
        runs[d].step()  # warm-up
    wall: dict[str, list[float]] = {d: [] for d in s.designs}
    cpu: dict[str, list[float]] = {d: [] for d in s.designs}
    for _ in progress(range(s.reps), desc=f"memory T={t_total}"):
        for d in s.designs:  # round robin: the same load for every design
            t0, c0 = time.perf_counter(), time.process_time()
            runs[d].step()
            wall[d].append(time.perf_counter() - t0)
            cpu[d].append(time.process_time() - c0)
    load = os.getloadavg()[0]
    mem_rows, cpu_rows = [], []
    for d in s.designs:
        sb, tb, gb = _tensor_bytes(runs[d])
        mem_rows.append({"T": t_total, "design": d, "ms_step": 1e3 * _median(wall[d]),
                         "state_kib": sb / 1024, "transient_kib": tb / 1024,
                         "graph_kib": gb / 1024, "peak_tensor_kib": (sb + tb + gb) / 1024,
                         "load1": load, "peak_rss_mib": _peak_rss(d, t_total, weights,
                                                                  s.pop_size) if s.rss else None,
                         "reps": s.reps, "pop_size": s.pop_size})
        cpu_rows.append({"T": t_total, "design": d, "cpu_ms_step": 1e3 * _median(cpu[d])})
    if "unrolled" in s.designs:
        for rows, key, ratio in ((mem_rows, "ms_step", "ms_vs_unrolled"),
                                 (cpu_rows, "cpu_ms_step", "vs_unrolled")):
            base = next(r[key] for r in rows if r["design"] == "unrolled")
            for r in rows:
                r[ratio] = r[key] / base
    return mem_rows, cpu_rows


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def memory_table(mem_rows: list[dict], cpu_rows: list[dict]) -> str:
    """The markdown table of the memory study (the format of docs/benchmarks/finetune.md)."""
    cpu = {(r["T"], r["design"]): r for r in cpu_rows}
    peak_un = {r["T"]: r["peak_tensor_kib"] for r in mem_rows if r["design"] == "unrolled"}
    lines = ["| T | design | CPU ms/θ step | vs unrolled | wall ms/θ step (load) | vs unrolled "
             "| state between steps KiB | path in the step KiB | largest graph KiB | peak "
             "tensors KiB | vs unrolled | peak RSS growth MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in mem_rows:
        c = cpu.get((r["T"], r["design"]), {})
        un = peak_un.get(r["T"])
        cells = [str(r["T"]), r["design"], _num(c.get("cpu_ms_step"), ".0f"),
                 _num(c.get("vs_unrolled"), ".2f"),
                 f"{r['ms_step']:.0f} ({r['load1']:.0f})", _num(r.get("ms_vs_unrolled"), ".2f"),
                 f"{r['state_kib']:.0f}", f"{r['transient_kib']:.0f}", f"{r['graph_kib']:.0f}",
                 f"{r['peak_tensor_kib']:.0f}",
                 _num(r["peak_tensor_kib"] / un if un else None, ".3f"),
                 _num(r.get("peak_rss_mib"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_memory_plot(path: Path, mem_rows: list[dict], cpu_rows: list[dict]) -> None:
    """Peak tensor memory and CPU time per theta step against T, one line per design."""
    plt = pyplot()

    cpu = {(r["T"], r["design"]): r["cpu_ms_step"] for r in cpu_rows}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for d in dict.fromkeys(r["design"] for r in mem_rows):
        rs = [r for r in mem_rows if r["design"] == d]
        axes[0].plot([r["T"] for r in rs], [r["peak_tensor_kib"] for r in rs], "o-", label=d)
        pts = [(r["T"], cpu[(r["T"], d)]) for r in rs if (r["T"], d) in cpu]
        axes[1].plot([t for t, _ in pts], [v for _, v in pts], "o-", label=d)
    t_values = sorted({r["T"] for r in mem_rows})
    for ax, label in zip(axes, ("peak tensors (KiB)", "CPU ms per θ step")):
        ax.set_xlabel("sampler steps T")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(t_values, [str(t) for t in t_values])
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _read_json_list(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def memory_report(folder: Path, quick: bool) -> str:
    """Write ``mem.md`` and ``mem.png`` from ``mem.json`` and ``cputime.json``."""
    sx = _suffix(quick)
    mem_rows = _read_json_list(folder / f"mem{sx}.json")
    if not mem_rows:
        raise MissingInputError(f"no memory-study results at {folder / f'mem{sx}.json'}; run "
                                "`samplegrad bench finetune --study memory` first")
    cpu_rows = _read_json_list(folder / f"cputime{sx}.json")
    table = memory_table(mem_rows, cpu_rows)
    (folder / f"mem{sx}.md").write_text(table)
    save_memory_plot(folder / f"mem{sx}.png", mem_rows, cpu_rows)
    print("\n" + table)
    return table


def run_memory(s: MemorySettings, weights: str | None, folder: Path, quick: bool,
               fresh: bool) -> dict:
    """Measure every T not already in ``mem.json`` with these settings; write the files."""
    sx = _suffix(quick)
    mem_path, cpu_path = folder / f"mem{sx}.json", folder / f"cputime{sx}.json"
    mem_rows = [] if fresh else _read_json_list(mem_path)
    cpu_rows = [] if fresh else _read_json_list(cpu_path)
    for t_total in s.n_steps:
        have = {r["design"] for r in mem_rows if r["T"] == t_total and
                r.get("reps") == s.reps and r.get("pop_size") == s.pop_size}
        if set(s.designs) <= have:
            print(f"memory T={t_total}: already in {mem_path} (--fresh reruns it)")
            continue
        new_mem, new_cpu = measure_t(t_total, s, weights)
        mem_rows = [r for r in mem_rows if r["T"] != t_total] + new_mem
        cpu_rows = [r for r in cpu_rows if r["T"] != t_total] + new_cpu
        mem_rows.sort(key=lambda r: r["T"])
        cpu_rows.sort(key=lambda r: r["T"])
        write_json(mem_path, mem_rows)
        write_json(cpu_path, cpu_rows)
    memory_report(folder, quick)
    return {"mem": mem_rows, "cputime": cpu_rows}


# ---------------------------------------------------------------- stale-path study
def stale_run(method: str, lr: float, seed: int, t_total: int, s: StaleSettings,
              base: nn.Module, alpha_bars: Tensor, classifier: nn.Module,
              train_x: Tensor) -> dict:
    """One finetuning run of the stale-path study: a row of ``stale_T{T}.jsonl``."""
    sched = sampling_schedule(alpha_bars, t_total)
    reward_fn = make_rewards(classifier, s.digit)["digit"]
    ref0 = {k: v.detach().clone() for k, v in base.named_parameters()}
    model = copy.deepcopy(base).requires_grad_(True)
    noise_eval = draw_noise(sched, s.eval_n, _DIM, torch.Generator(device="cpu").manual_seed(1234))
    delay_match = _DELAY.fullmatch(method)
    delay = int(delay_match.group(1)) if delay_match else 0
    memory = "recompute" if method == "recompute" or delay else "full"
    cfg = FinetuneConfig(pop_size=s.pop_size, lr=lr, kl_weight=s.kl_weight, seed=seed,
                         path_memory=memory)
    state = (unrolled_init(model, cfg, _DIM) if method == "unrolled"
             else finetune_init(model, sched, cfg, _DIM))
    history: collections.deque = collections.deque()
    evals, trace = [], []

    def ev(k: int) -> None:
        m, _ = evaluate(model, dict(model.named_parameters()), ref0, sched, noise_eval,
                        reward_fn, classifier, s.digit, train_x)
        evals.append({"step": k, **{q: m[q] for q in ("reward", "p_digit", "path_kl",
                                                       "nn_dist")}})

    ev(0)
    t0 = time.time()
    for k in range(1, s.theta_steps + 1):
        if method == "unrolled":
            state, info = unrolled_step(state, model, sched, reward_fn, cfg)
        elif delay:
            params = dict(model.named_parameters())
            history.append({q: v.detach().clone() for q, v in params.items()})
            old = history[0]  # theta of `delay` steps before (the first theta early on)
            if len(history) > delay:
                history.popleft()
            noise = torch.randn((t_total + 1, s.pop_size, _DIM), generator=state.generator,
                                device="cpu")
            with torch.no_grad():
                path = sample_path(
                    lambda x, t, old=old: torch.func.functional_call(model, old, (x, t)),
                    noise, sched)
            grads, info = adjoint_grad(model, params, state.ref_params, path, sched,
                                       reward_fn, s.kl_weight)
            info["grad_norm"] = _apply_grads(state.optimizer, params, grads)
        else:
            state, info = finetune_step(state, model, sched, reward_fn, cfg)
        trace.append((info["reward"], info["kl"], info["grad_norm"]))
        if k % s.eval_every == 0 or k == s.theta_steps:
            ev(k)
    return {"job": f"{method}:{lr:g}:{seed}:{t_total}:{s.kl_weight:g}", "method": method,
            "lr": lr, "seed": seed, "T": t_total, "kl_weight": s.kl_weight, "evals": evals,
            "trace": trace, "s": time.time() - t0, "theta_steps": s.theta_steps,
            "pop_size": s.pop_size, "digit": s.digit}


def _key(r: dict) -> tuple:
    """A run's identity (rows from before these keys were stored: 60 steps, N = 16)."""
    return (r["method"], float(r["lr"]), int(r["seed"]), int(r["T"]), float(r["kl_weight"]),
            r.get("theta_steps", 60), r.get("pop_size", 16))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []


def _mean_sd(v: list[float]) -> str:
    return f"{statistics.mean(v):.3g} ± {statistics.stdev(v):.2g}" if len(v) > 1 \
        else f"{v[0]:.3g}"


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    g: dict[tuple, list[dict]] = collections.defaultdict(list)
    for r in rows:
        g[(r["method"], r["T"], r["kl_weight"], r["lr"])].append(r)
    return g


def stale_table(rows: list[dict]) -> str:
    """The markdown table of the stale-path study, one line per (method, T, λ, lr)."""
    g = _groups(rows)
    half = max(r["evals"][-1]["step"] for r in rows) // 2
    digit = rows[0].get("digit", 3)  # rows from before "digit" was stored: 3
    lines = [f"| method | T | λ | lr | seeds | p({digit}) after | reward after | path KL "
             f"after | max eval path KL | min eval reward after step {half} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(g, key=lambda k: (k[1], k[2], k[0], k[3])):
        rs = g[k]
        last = [r["evals"][-1] for r in rs]
        lines.append(
            f"| {k[0]} | {k[1]} | {k[2]} | {k[3]:g} | {len(rs)} | "
            f"{_mean_sd([e['p_digit'] for e in last])} | {_mean_sd([e['reward'] for e in last])}"
            f" | {_mean_sd([e['path_kl'] for e in last])} | "
            f"{_mean_sd([max(e['path_kl'] for e in r['evals']) for r in rs])} | "
            f"{_mean_sd([min(e['reward'] for e in r['evals'] if e['step'] >= half) for r in rs])}"
            " |")
    return "\n".join(lines) + "\n"


_COLORS = {"full": "C0", "recompute": "C1", "unrolled": "C2", "delay2": "C4", "delay5": "C5",
           "delay10": "C3"}


def save_stale_plot(path: Path, rows: list[dict], kl_weight: float) -> None:
    """p(digit) and path KL against theta steps, one panel column per lr, one line per run
    (the runs at path-KL weight ``kl_weight``)."""
    plt = pyplot()

    g = _groups(rows)
    lrs = sorted({k[3] for k in g})
    fig, axes = plt.subplots(2, len(lrs), figsize=(4 * len(lrs), 6.5), squeeze=False)
    for i, lr in enumerate(lrs):
        for k, rs in g.items():
            if k[3] != lr or k[2] != kl_weight:
                continue
            for n, r in enumerate(rs):
                st = [e["step"] for e in r["evals"]]
                color = _COLORS.get(k[0], "k")
                axes[0][i].plot(st, [e["p_digit"] for e in r["evals"]], color=color, alpha=.8,
                                label=k[0] if n == 0 else None)
                axes[1][i].plot(st, [e["path_kl"] for e in r["evals"]], color=color, alpha=.8)
        axes[0][i].set_title(f"Adam lr {lr:g}")
        axes[0][i].set_ylabel(f"p({rows[0].get('digit', 3)}), fixed-noise samples")
        axes[1][i].set_yscale("log")
        axes[1][i].set_ylabel("path KL")
        axes[1][i].set_xlabel("θ steps")
        axes[0][i].legend(fontsize=7)
    save_figure(fig, path, dpi=90)


def stale_report(folder: Path, t_values: Sequence[int] | None, quick: bool,
                 kl_weight: float) -> dict[int, str]:
    """Write ``stale_T{T}.md`` and ``.png`` from ``stale_T{T}.jsonl`` (every T there when
    ``t_values`` is None)."""
    sx = _suffix(quick)
    if t_values is None:
        pat = re.compile(rf"stale_T(\d+){sx}\.jsonl")
        t_values = sorted(int(m.group(1)) for p in folder.glob("stale_T*.jsonl")
                          if (m := pat.fullmatch(p.name)))
    tables = {}
    for t_total in t_values:
        rows = read_jsonl(folder / f"stale_T{t_total}{sx}.jsonl")
        if not rows:
            raise MissingInputError(f"no stale-path results at "
                                    f"{folder / f'stale_T{t_total}{sx}.jsonl'}; run "
                                    "`samplegrad bench finetune --study stale` first")
        tables[t_total] = stale_table(rows)
        (folder / f"stale_T{t_total}{sx}.md").write_text(tables[t_total])
        save_stale_plot(folder / f"stale_T{t_total}{sx}.png", rows, kl_weight)
        print(f"\nT = {t_total}:\n\n{tables[t_total]}")
    return tables


def run_stale(s: StaleSettings, weights: Path | None, folder: Path, quick: bool,
              fresh: bool) -> dict:
    """Run every (method, lr, seed) per T not already in its JSONL; write the files."""
    sx = _suffix(quick)
    base, alpha_bars, used = load_or_train(weights, quick)
    classifier = digit_classifier()
    train_x = load_digits("train")[0]
    print(f"stale study: {s}\n  weights {used}")
    for t_total in s.n_steps:
        path = folder / f"stale_T{t_total}{sx}.jsonl"
        if fresh:
            path.unlink(missing_ok=True)
        done = {_key(r) for r in read_jsonl(path)}
        jobs = [(m, lr, seed) for m in s.methods for lr in s.lrs for seed in s.seeds]
        todo = [j for j in jobs if (j[0], j[1], j[2], t_total, s.kl_weight, s.theta_steps,
                                    s.pop_size) not in done]
        if len(todo) < len(jobs):
            print(f"T={t_total}: {len(jobs) - len(todo)} of {len(jobs)} runs already in {path}")
        for method, lr, seed in progress(todo, desc=f"stale T={t_total}"):
            row = stale_run(method, lr, seed, t_total, s, base, alpha_bars, classifier, train_x)
            with open(path, "a") as f:  # one line per run: an interrupt loses one run at most
                f.write(json.dumps(row) + "\n")
            e = row["evals"][-1]
            print(f"{row['job']}: p({s.digit}) {e['p_digit']:.3f} reward {e['reward']:.3f} "
                  f"path KL {e['path_kl']:.1f} ({row['s']:.0f}s)", flush=True)
    return {"tables": stale_report(folder, s.n_steps, quick, s.kl_weight)}


# ---------------------------------------------------------------- entry point
def _memory_settings(args: argparse.Namespace) -> MemorySettings:
    base = MemorySettings(n_steps=(4,), reps=1, rss=False) if args.quick else MemorySettings()
    designs = tuple(args.methods) if args.methods else base.designs
    _check_methods(designs, DESIGNS, "memory")
    return MemorySettings(
        n_steps=tuple(args.n_steps) if args.n_steps else base.n_steps,
        reps=args.reps or base.reps, pop_size=args.pop_size or base.pop_size,
        rss=base.rss if args.rss is None else args.rss, designs=designs)


def _stale_settings(args: argparse.Namespace) -> StaleSettings:
    base = StaleSettings(n_steps=(3,), methods=("full", "recompute", "unrolled", "delay2"),
                         lrs=(1e-5,), seeds=(0,), theta_steps=4, pop_size=4, eval_n=16,
                         eval_every=2) if args.quick else StaleSettings()
    methods = tuple(args.methods) if args.methods else base.methods
    _check_methods(methods, STALE_METHODS, "stale", delays=True)
    return StaleSettings(
        n_steps=tuple(args.n_steps) if args.n_steps else base.n_steps, methods=methods,
        lrs=tuple(args.lr_grid) if args.lr_grid else base.lrs,
        seeds=tuple(args.seed_grid) if args.seed_grid else base.seeds,
        kl_weight=base.kl_weight if args.kl_weight is None else args.kl_weight,
        theta_steps=args.theta_steps or base.theta_steps,
        pop_size=args.pop_size or base.pop_size, eval_n=base.eval_n,
        eval_every=base.eval_every, digit=base.digit if args.digit is None else args.digit)


def run_study(args: argparse.Namespace) -> dict:
    """`bench finetune --study NAME`: run (or, with ``--from-results``, report) a study."""
    torch.set_num_threads(args.threads or 1)
    folder = Path(args.out) / "studies"
    folder.mkdir(parents=True, exist_ok=True)
    if args.study == "memory":
        s = _memory_settings(args)
        if args.from_results:
            return {"table": memory_report(folder, args.quick)}
        weights = args.checkpoint
        if weights is None and not args.quick and default_weights().exists():
            weights = default_weights()
        if weights is not None and not Path(weights).exists():
            raise MissingInputError(f"--checkpoint: no DDPM weights at {weights}")
        print(f"memory study: {s}\n  weights: {weights or 'untrained EpsMLP(64, 256, 3)'}")
        return run_memory(s, None if weights is None else str(weights), folder, args.quick,
                          args.fresh)
    s = _stale_settings(args)
    if args.from_results:
        return {"tables": stale_report(folder, tuple(args.n_steps) if args.n_steps else None,
                                       args.quick, s.kl_weight)}
    return run_stale(s, args.checkpoint, folder, args.quick, args.fresh)
