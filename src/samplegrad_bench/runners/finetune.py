"""`samplegrad bench finetune`: Implicit Diffusion (adjoint + queue) vs the unrolled sampler.

Finetunes the pretrained 8x8-digit DDPM (``samplegrad train-ddpm``) toward a reward with a
path-KL penalty to the pretrained model, for T-step ancestral samplers, with two gradient
estimators given the same number of theta steps and the same Adam settings:

* ``implicit``: the queue of T populations (one batched sampler step per iteration) and the
  adjoint gradient along the finished path (``samplegrad.implicit.finetune``);
* ``recompute``: the same ``finetune_step`` with ``FinetuneConfig(path_memory="recompute")``:
  no queue, one fresh path per theta step sampled without graph under the current theta,
  and the adjoint along it (the unrolled gradient on the same noise, one path in memory);
* ``unrolled``: fresh noise, the T-step sampler with autograd, backward through it all.

Rewards (images mapped from [-1, 1] to [0, 1]): ``brightness`` (mean pixel, unclamped) and
``digit`` (log-probability of one digit under ``tasks.rewards.digit_classifier``, on the
clamped image). After finetuning each model is evaluated on the same fixed noise:
reward, clamped brightness, classifier confidence and p(digit), the mean distance of each
sample to its nearest training image, and the path KL to the pretrained model.

Memory: ``activations`` = bytes autograd saves for one gradient, weights excluded
(unrolled: the whole T-step graph; implicit and recompute: the largest single adjoint step,
the most that is alive at once; ``graph_kib`` in the JSON counts the weights too);
``state`` = the method's own path tensors (implicit: the queue's stored paths, kept between
steps, ``T (T+1) N 64`` floats; recompute: the one path of the step, ``(T+1) N 64``;
unrolled: one noise draw, the same size), parameters and Adam moments excluded
(the same for both); ``peak RSS`` (optional, ``--rss``) = peak resident memory of a fresh
subprocess running a few theta steps, minus its resident memory before the first one.
Results are written after every run (``runs/finetune/finetune.json``; ``--publish``:
``docs/results/finetune/``); a rerun with the same settings skips the runs already there (an
interrupted run resumes and writes the same files, timings and memory probes aside; the
sample images of finished runs are cached for its grids); ``--fresh`` reruns them all.

``--study memory`` and ``--study stale`` run the path-memory and stale-path studies instead
(``_finetune_studies``; files under ``OUT/studies/``).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import re
import resource
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from samplegrad.checkpoint import load_cache, remove_checkpoint, save_checkpoint
from samplegrad.diffusion import SamplerSchedule, draw_noise, sample_path, sampling_schedule
from samplegrad.implicit.finetune import (
    FinetuneConfig,
    adjoint_grad,
    adjoint_step,
    advance,
    finetune_init,
    finetune_step,
    path_kl,
    unrolled_init,
    unrolled_loss,
    unrolled_step,
)
from samplegrad_bench._args import (
    MissingInputError,
    UsageError,
    comma_list,
    float_list,
    int_list,
    nonneg_float,
    positive_float,
    positive_int,
    seed_list,
)
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    progress,
    pyplot,
    read_results,
    save_figure,
    saved_tensor_bytes,
    write_json,
)
from samplegrad_bench.data import load_digits
from samplegrad_bench.paths import cache_dir
from samplegrad_bench.runners.train_ddpm import QUICK, default_weights, load_ddpm, train_ddpm
from samplegrad_bench.tasks.rewards import brightness, digit_classifier, digit_log_prob

METHODS = ("implicit", "recompute", "unrolled")
STUDIES = ("memory", "stale")
_STUDY_NAMES = {"memory": ("full", "recompute", "checkpoint", "unrolled"),
                "stale": ("full", "recompute", "unrolled")}  # and delayK (--study stale)
_STUDY_ONLY = ("reps", "lr_grid", "seed_grid", "from_results")


def _method_list(text: str) -> list[str]:
    """``--methods``: the benchmark's methods or a study's (checked against --study later)."""
    names = comma_list()(text)
    known = {*METHODS, *_STUDY_NAMES["memory"], *_STUDY_NAMES["stale"]}
    bad = [n for n in names if n not in known and not re.fullmatch(r"delay[1-9]\d*", n)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(map(repr, bad))}; choose from {','.join(METHODS)} (--study "
            f"memory: {','.join(_STUDY_NAMES['memory'])}; --study stale: "
            f"{','.join(_STUDY_NAMES['stale'])},delayK)")
    return names


@dataclass
class BenchConfig:
    """Settings of one `bench finetune` run (printed and stored with the results)."""

    n_steps: tuple[int, ...] = (10, 25, 50, 100)  # sampler steps T
    theta_steps: int = 60  # theta updates per run (both methods)
    digit_n_steps: tuple[int, ...] = (25,)  # T values for the digit reward
    digit: int = 3
    digit_lr: float = 1e-5  # Adam step for the digit reward (its gradients are far stronger)
    eval_n: int = 256
    timing_reps: int = 3
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        pop_size=16, lr=1e-4, kl_weight=3e-3))
    methods: tuple[str, ...] = METHODS


def quick_config(seed: int) -> BenchConfig:
    return BenchConfig(n_steps=(10, 25), theta_steps=20, digit_n_steps=(10,), eval_n=128,
                       timing_reps=2, finetune=FinetuneConfig(pop_size=16, lr=1e-4,
                                                              kl_weight=3e-3, seed=seed))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                   help="pretrained DDPM weights (default: the cache's checkpoints/"
                        "ddpm_digits.pt from `samplegrad train-ddpm`; quick: "
                        "ddpm_digits_quick.pt if that is missing, trained here if need be)")
    p.add_argument("--theta-steps", type=positive_int, default=None,
                   help="theta updates per run")
    p.add_argument("--n-steps", type=int_list, default=None, metavar="T,...",
                   help="comma list of sampler steps T")
    p.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate")
    p.add_argument("--kl-weight", type=nonneg_float, default=None, help="path-KL weight")
    p.add_argument("--pop-size", type=positive_int, default=None,
                   help="samples per theta step")
    p.add_argument("--methods", type=_method_list, default=None,
                   metavar="M,...", help="comma list of " + ",".join(METHODS) +
                   " (default all; recompute = the implicit step with path_memory='recompute'"
                   "); --study memory: designs of " + ",".join(_STUDY_NAMES["memory"]) +
                   "; --study stale: " + ",".join(_STUDY_NAMES["stale"]) + ",delayK")
    p.add_argument("--digit", type=int, choices=range(10), default=None, metavar="0-9",
                   help="target digit of the digit reward (default 3)")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                   help="peak-RSS probes in subprocesses (default: on, off with --quick)")
    p.add_argument("--study", choices=STUDIES, default=None,
                   help="run a study instead of the benchmark (see docs/benchmarks/"
                        "finetune.md): memory = path-memory designs (--n-steps, --reps, "
                        "--pop-size, --rss); stale = stale-path runs (--n-steps, --methods, "
                        "--lr-grid, --seed-grid, --kl-weight, --theta-steps)")
    p.add_argument("--reps", type=positive_int, default=None,
                   help="--study memory: timed theta steps per design (median; default 3)")
    p.add_argument("--lr-grid", type=float_list, default=None, metavar="LR,...",
                   help="--study stale: Adam learning rates (default 1e-5,3e-5,1e-4)")
    p.add_argument("--seed-grid", type=seed_list, default=None, metavar="S,...",
                   help="--study stale: sampler-noise seeds (default 0,1,2)")
    p.add_argument("--from-results", action="store_true",
                   help="with --study: rebuild its tables and plots from the raw files in the "
                        "output folder's studies/ (no runs)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: rerun every run (by default a rerun with the same settings "
                        "skips the runs already in the JSON and runs the rest)")


# ---------------------------------------------------------------- setup
def load_or_train(weights: Path | None, quick: bool) -> tuple[torch.nn.Module, Tensor, Path]:
    """The pretrained DDPM: ``weights`` if given (it must exist), else the cache's weights
    from `samplegrad train-ddpm` (a :class:`MissingInputError` naming that command when
    missing). With ``quick`` the cache's small stand-in serves when the full weights are
    missing; it is trained here (about a minute) when it is missing too."""
    if weights is not None:
        if not Path(weights).exists():
            raise MissingInputError(
                f"--checkpoint: no DDPM weights at {weights}; create them with "
                f"`samplegrad train-ddpm --checkpoint {weights}` (or --quick)")
    else:
        full, small = default_weights(), default_weights(quick=True)
        weights = full if full.exists() or not quick else small
        if not weights.exists() and not quick:
            raise MissingInputError(
                f"no DDPM weights at {weights}; create them with `samplegrad train-ddpm` "
                "(or run `samplegrad bench finetune --quick`, which trains a small stand-in)")
        if not weights.exists():
            print(f"finetune: no pretrained DDPM at {full}; training a quick stand-in now "
                  f"({QUICK}) -> {weights}. `samplegrad train-ddpm` writes the full one.")
            train_ddpm(QUICK, weights)
    model, alpha_bars, _ = load_ddpm(weights)
    return model, alpha_bars, weights


def to_unit(x: Tensor) -> Tensor:
    """Model space [-1, 1] -> pixel space [0, 1] (not clamped)."""
    return (x + 1.0) / 2.0


def make_rewards(classifier: torch.nn.Module, digit: int) -> dict:
    return {
        "brightness": lambda x: brightness(to_unit(x).clamp(0.0, 1.0)),
        "digit": lambda x: digit_log_prob(classifier, to_unit(x).clamp(0.0, 1.0), digit),
    }


def _eps(model: torch.nn.Module, params: dict) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, t: torch.func.functional_call(model, params, (x, t))


@torch.no_grad()
def evaluate(model, params, ref_params, sched: SamplerSchedule, noise: Tensor, reward_fn,
             classifier, digit: int, train_x: Tensor) -> tuple[dict, Tensor]:
    """Metrics of the samples drawn on ``noise``; also returns the images in [0, 1]."""
    path = sample_path(_eps(model, params), noise, sched)
    x0 = path[0]
    img = to_unit(x0).clamp(0.0, 1.0)
    probs = torch.softmax(classifier(img), -1)
    nn_dist = torch.cdist(img, train_x).min(dim=1).values
    return {
        "reward": reward_fn(x0).mean().item(),
        "brightness": img.mean().item(),
        "p_digit": probs[:, digit].mean().item(),
        "confidence": probs.max(-1).values.mean().item(),
        "nn_dist": nn_dist.mean().item(),
        "path_kl": path_kl(model, params, ref_params, path, sched).mean().item(),
    }, img


def _params(model: torch.nn.Module) -> dict[str, Tensor]:
    """Detached copies of the (finetuned) model's parameters."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _nbytes(*tensors: Tensor) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


# ---------------------------------------------------------------- one run
def run_method(method: str, model, ref_params, sched, reward_fn, cfg: FinetuneConfig,
               steps: int, desc: str, measure: bool = True,
               reps: int = 3) -> tuple[dict, dict, list]:
    """Finetune for ``steps`` theta steps; returns (final params, measurements, trace)."""
    model = copy.deepcopy(model).requires_grad_(True)  # trained in place; the caller's stays
    init_time = 0.0
    if method == "recompute":
        cfg = replace(cfg, path_memory="recompute")
    if method in ("implicit", "recompute"):
        with Timer() as t:
            state = finetune_init(model, sched, cfg, 64)
        init_time = t.seconds
        step = lambda s: finetune_step(s, model, sched, reward_fn, cfg)  # noqa: E731
    else:
        state = unrolled_init(model, cfg, 64)
        step = lambda s: unrolled_step(s, model, sched, reward_fn, cfg)  # noqa: E731
    trace, times = [], []
    for _ in progress(range(steps), desc=desc):
        with Timer() as t:
            state, info = step(state)
        times.append(t.seconds)
        trace.append((info["reward"], info["kl"]))
    times_sorted = sorted(times[1:] or times)
    meas = {"init_s": init_time, "step_ms": 1e3 * sum(times) / len(times),
            "step_ms_median": 1e3 * times_sorted[len(times_sorted) // 2],
            "total_s": init_time + sum(times)}
    if not measure:
        return _params(model), meas, trace
    meas.update(measure_memory(method, state, model, ref_params, sched, reward_fn, cfg))
    if method == "implicit":
        meas.update(time_implicit_parts(state, model, ref_params, sched, reward_fn, cfg, reps))
    return _params(model), meas, trace


def measure_memory(method, state, model, ref_params, sched, reward_fn, cfg) -> dict:
    """Autograd graph bytes of one gradient and the method's state bytes (see module doc)."""
    n = cfg.pop_size
    params = dict(model.named_parameters())
    weights = [*params.values(), *ref_params.values()]
    if method in ("implicit", "recompute"):
        # the states are views of the queue / of the step's one path (counted as state)
        path = state.paths[0] if method == "implicit" else torch.zeros(
            sched.n_steps + 1, n, 64)
        weights.append(path)
        graph = acts = 0
        a = torch.ones(n, 64) / n
        for j in range(sched.n_steps):  # every step's graph is built and freed alone
            with saved_tensor_bytes() as m:
                adjoint_step(model, params, ref_params, path[j + 1], j, a, sched,
                             cfg.kl_weight / n)
            with saved_tensor_bytes(exclude=weights) as m2:
                adjoint_step(model, params, ref_params, path[j + 1], j, a, sched,
                             cfg.kl_weight / n)
            graph, acts = max(graph, m["bytes"]), max(acts, m2["bytes"])
        state_bytes = _nbytes(state.paths, state.stage) if method == "implicit" else \
            _nbytes(path)
    else:
        noise = draw_noise(sched, n, 64, torch.Generator().manual_seed(0))
        with saved_tensor_bytes() as m:
            loss, _ = unrolled_loss(model, params, ref_params, noise, sched, reward_fn,
                                    cfg.kl_weight)
        del loss
        with saved_tensor_bytes(exclude=weights) as m2:
            loss, _ = unrolled_loss(model, params, ref_params, noise, sched, reward_fn,
                                    cfg.kl_weight)
        del loss
        graph, acts = m["bytes"], m2["bytes"]
        state_bytes = _nbytes(noise)
    return {"graph_kib": graph / 1024, "activation_kib": acts / 1024,
            "state_kib": state_bytes / 1024}


def time_implicit_parts(state, model, ref_params, sched, reward_fn, cfg, reps: int = 3) -> dict:
    """Time one batched sampler step (all T populations) and one adjoint pass, alone."""
    t_total = sched.n_steps
    adv, adj = [], []
    for _ in range(reps):
        paths, stage = state.paths.clone(), state.stage.clone()
        slots = (stage < t_total).nonzero().flatten()
        with Timer() as t:
            advance(model, paths, stage, slots, sched,
                    torch.Generator().manual_seed(0))
        adv.append(t.seconds)
        with Timer() as t:
            adjoint_grad(model, dict(model.named_parameters()), ref_params, paths[0], sched,
                         reward_fn, cfg.kl_weight)
        adj.append(t.seconds)
    return {"advance_ms": 1e3 * min(adv), "adjoint_ms": 1e3 * min(adj)}


# ---------------------------------------------------------------- peak RSS probes
def _status_kib(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _rss_worker(q, method, weights, n_steps, cfg_dict, steps):
    torch.set_num_threads(1)
    model, alpha_bars, _ = load_ddpm(weights)
    cfg = FinetuneConfig(**cfg_dict)
    ref = {k: v.detach().clone() for k, v in model.named_parameters()}
    reward_fn = lambda x: brightness(to_unit(x).clamp(0.0, 1.0))  # noqa: E731
    # warm-up on a 1-step sampler (lazy library initialization is not the method's memory)
    run_method(method, model, ref, sampling_schedule(alpha_bars, 1), reward_fn, cfg, 2, "",
               measure=False)
    sched = sampling_schedule(alpha_bars, n_steps)
    try:  # reset the peak (VmHWM) so that only the run below counts
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, reset = _status_kib("VmRSS"), True
    except OSError:
        before, reset = _status_kib("VmRSS"), False
    run_method(method, model, ref, sched, reward_fn, cfg, steps, "", measure=False)
    peak = _status_kib("VmHWM") if reset else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put((peak - before) / 1024)


def peak_rss_probe(method: str, weights: Path, n_steps: int, cfg: FinetuneConfig,
                   steps: int = 3) -> float:
    """Peak RSS growth (MiB) of ``steps`` theta steps in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_rss_worker, args=(q, method, str(weights), n_steps, asdict(cfg),
                                              steps))
    p.start()
    out = q.get()
    p.join()
    return out


# ---------------------------------------------------------------- plots
def _grid(img: Tensor, cols: int = 8) -> Tensor:
    """``(n, 64)`` images in [0, 1] -> one ``(rows*9-1, cols*9-1)`` picture (1-px gaps)."""
    n = (img.shape[0] // cols) * cols
    x = torch.nn.functional.pad(img[:n].reshape(-1, 8, 8), (0, 1, 0, 1), value=0.5)
    x = x.reshape(n // cols, cols, 9, 9).permute(0, 2, 1, 3).reshape(n // cols * 9, cols * 9)
    return x[:-1, :-1]


def save_grids(path: Path, grids: dict[str, Tensor], title: str) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.6), squeeze=False)
    for ax, (name, img) in zip(axes[0], grids.items()):
        ax.imshow(_grid(img[:64]).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def save_scaling_plot(path: Path, rows: list[dict]) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    keys = [("activation_kib", "autograd activations (KiB)"),
            ("state_kib", "state between steps (KiB)"),
            ("step_ms_median", "time per theta step (ms, median)")]
    for ax, (key, label) in zip(axes, keys):
        for method, marker in (("implicit", "o-"), ("recompute", "^-."), ("unrolled", "s--")):
            rs = [r for r in rows if r["method"] == method and r["reward_name"] == "brightness"]
            if not rs:
                continue
            ax.plot([r["T"] for r in rs], [r[key] for r in rs], marker, label=method)
        ax.set_xlabel("sampler steps T")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
    save_figure(fig, path)


# ---------------------------------------------------------------- runner
def _settings(args: argparse.Namespace) -> BenchConfig:
    cfg = quick_config(args.seed) if args.quick else BenchConfig()
    ft = cfg.finetune
    ft = FinetuneConfig(**{**asdict(ft), "seed": args.seed,
                           **({"lr": args.lr} if args.lr else {}),
                           **({"kl_weight": args.kl_weight} if args.kl_weight is not None
                              else {}),
                           **({"pop_size": args.pop_size} if args.pop_size else {})})
    return BenchConfig(
        n_steps=tuple(args.n_steps) if args.n_steps else cfg.n_steps,
        theta_steps=args.theta_steps or cfg.theta_steps,
        digit_n_steps=cfg.digit_n_steps, digit=cfg.digit if args.digit is None else args.digit,
        digit_lr=cfg.digit_lr, eval_n=cfg.eval_n, timing_reps=cfg.timing_reps, finetune=ft,
        methods=tuple(args.methods) if args.methods else cfg.methods)


def _same_settings(a: dict, b: dict) -> bool:
    """Settings equal up to the T lists (runs for other T values can be merged)."""
    drop = ("n_steps", "digit_n_steps")
    return {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}


def _images_path(json_path: Path, meta: dict) -> Path:
    """The cache file of a run's sample images (the grids of a resumed run need the samples
    of the runs finished before the interrupt), keyed by output file, settings and weights."""
    import hashlib
    import json

    settings = {k: v for k, v in meta["settings"].items() if k not in ("n_steps",
                                                                      "digit_n_steps")}
    key = json.dumps({"out": str(json_path.resolve()), "settings": settings,
                      "weights": meta["weights"]}, sort_keys=True, default=str)
    return cache_dir("finetune") / f"images_{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def _image_key(key: tuple) -> str:
    return "|".join(map(str, key))


def run(args: argparse.Namespace) -> dict:
    if getattr(args, "study", None):
        from samplegrad_bench.runners._finetune_studies import run_study

        return run_study(args)
    used = [f"--{k.replace('_', '-')}" for k in _STUDY_ONLY if getattr(args, k, None)]
    if used:
        raise UsageError(f"{', '.join(used)}: only with --study memory|stale")
    if args.methods and not set(args.methods) <= set(METHODS):
        raise UsageError(f"--methods: without --study choose from {','.join(METHODS)}")
    torch.set_num_threads(args.threads or 1)
    bench = _settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / ("finetune_quick.json" if args.quick else "finetune.json")
    model, alpha_bars, weights = load_or_train(args.checkpoint, args.quick)
    ref = {k: v.detach().clone() for k, v in model.named_parameters()}
    classifier = digit_classifier()
    rewards = make_rewards(classifier, bench.digit)
    train_x = load_digits("train")[0]
    test_x = load_digits("test")[0]
    data_nn = torch.cdist(test_x, train_x).min(dim=1).values.mean().item()
    meta = {"settings": asdict(bench), "weights": str(weights), "threads":
            torch.get_num_threads(), "test_digits_nn_dist": data_nn}
    print(f"bench finetune: {bench}\n  weights {weights}, 1 thread; held-out digits' mean "
          f"distance to the nearest training digit: {data_nn:.3f}")

    done: dict = {}
    images_path = _images_path(json_path, meta)
    if args.fresh:
        remove_checkpoint(images_path)
    elif json_path.exists():
        old = read_results(json_path, "rows", list)
        if _same_settings(old.get("meta", {}).get("settings", {}), meta["settings"]):
            done = {(r["reward_name"], r["T"], r["method"]): r for r in old["rows"]}
    images: dict[str, Tensor] = {}  # samples of every finished run, for the grids of a rerun
    if done:
        images = (load_cache(images_path, check=lambda b: b["images"].items()) or
                  {"images": {}})["images"]
    grids: dict[str, dict[str, Tensor]] = {}
    jobs = [("brightness", t) for t in bench.n_steps]
    jobs += [("digit", t) for t in bench.digit_n_steps]
    planned = {(r, t, m) for r, t in jobs for m in bench.methods}
    rows = [r for k, r in done.items() if k not in planned]  # other T values: kept

    def dump() -> None:
        rows.sort(key=lambda r: (r["reward_name"] != "brightness", r["T"], r["method"]))
        for name, key in (("brightness", "n_steps"), ("digit", "digit_n_steps")):
            meta["settings"][key] = sorted({r["T"] for r in rows if r["reward_name"] == name})
        write_json(json_path, {"meta": meta, "rows": rows})
    for reward_name, t_total in jobs:
        sched = sampling_schedule(alpha_bars, t_total)
        reward_fn = rewards[reward_name]
        ft_cfg = bench.finetune
        if reward_name == "digit":
            ft_cfg = FinetuneConfig(**{**asdict(ft_cfg), "lr": bench.digit_lr})
        noise = draw_noise(sched, bench.eval_n, 64, torch.Generator().manual_seed(1234))
        before, img0 = evaluate(model, ref, ref, sched, noise, reward_fn, classifier,
                                bench.digit, train_x)
        key_grid = f"{reward_name}, T={t_total}"
        grids[key_grid] = {"pretrained": img0}
        for method in bench.methods:
            key = (reward_name, t_total, method)
            label = f"{method} (after {bench.theta_steps} steps)"
            if key in done:
                rows.append(done[key])
                if _image_key(key) in images:
                    grids[key_grid][label] = images[_image_key(key)]
                print(f"  {key}: already measured, skipped (use --fresh to redo)")
                continue
            params, meas, trace = run_method(
                method, model, ref, sched, reward_fn, ft_cfg, bench.theta_steps,
                f"{reward_name} T={t_total} {method}", reps=bench.timing_reps)
            after, img = evaluate(model, params, ref, sched, noise, reward_fn, classifier,
                                  bench.digit, train_x)
            grids[key_grid][label] = img
            images[_image_key(key)] = img
            row = {"reward_name": reward_name, "T": t_total, "method": method,
                   "reward_before": before["reward"], **after, **meas,
                   "p_digit_before": before["p_digit"], "conf_before": before["confidence"],
                   "nn_dist_before": before["nn_dist"],
                   "brightness_before": before["brightness"],
                   "train_trace": trace[:: max(1, len(trace) // 50)]}
            if reward_name == "brightness" and args.rss is not False and (args.rss or
                                                                           not args.quick):
                row["peak_rss_mib"] = peak_rss_probe(method, weights, t_total, bench.finetune)
            rows.append(row)
            save_checkpoint(images_path, {"images": images})
            dump()  # after every run: an interrupt loses at most the run under way
        if len(grids[key_grid]) == 1 + len(bench.methods):  # never a partial grid over a full one
            save_grids(out / f"samples_{reward_name}_T{t_total}{'_quick' if args.quick else ''}"
                       ".png", grids[key_grid],
                       f"{reward_name}: samples on the same noise, T={t_total}")
    dump()
    report(rows, bench, meta, out, args.quick)
    return {"meta": meta, "rows": rows}


def report(rows: list[dict], bench: BenchConfig, meta: dict, out: Path, quick: bool) -> None:
    ft = bench.finetune
    table = markdown_table([
        {"reward": r["reward_name"], "T": r["T"], "method": r["method"],
         "reward before": r["reward_before"], "reward after": r["reward"],
         "brightness": r["brightness"], f"p({bench.digit})": r["p_digit"],
         "conf": r["confidence"], "NN dist": r["nn_dist"], "path KL": r["path_kl"],
         "ms/θ step": r["step_ms_median"], "activations KiB": r["activation_kib"],
         "state KiB": r["state_kib"],
         "peak RSS MiB": r.get("peak_rss_mib", "")}
        for r in rows])
    imp = {(r["reward_name"], r["T"]): r for r in rows if r["method"] == "implicit"}
    unr = {(r["reward_name"], r["T"]): r for r in rows if r["method"] == "unrolled"}
    timing = markdown_table([
        {"reward": k[0], "T": k[1], "advance ms (T·N rows)": r["advance_ms"],
         "adjoint ms": r["adjoint_ms"], "implicit ms/θ step": r["step_ms_median"],
         "ratio step/(advance+adjoint)":
             r["step_ms_median"] / (r["advance_ms"] + r["adjoint_ms"]),
         "unrolled ms/θ step": unr[k]["step_ms_median"] if k in unr else "",
         "activations unrolled/implicit": (unr[k]["activation_kib"] / r["activation_kib"])
         if k in unr else ""}
        for k, r in imp.items()])
    head = (f"Settings: {bench.theta_steps} theta steps per run, Adam lr {ft.lr}, kl_weight "
            f"{ft.kl_weight}, {ft.pop_size} samples per theta step, eval on {bench.eval_n} "
            f"fixed-noise samples, weights {meta['weights']}, 1 thread; digit reward: "
            f"log p({bench.digit}). Held-out digits' NN dist: {meta['test_digits_nn_dist']:.3f}.")
    text = (f"{head}\n\n{table}\n\nImplicit step breakdown (ms/θ step: median over the "
            f"θ steps; advance and adjoint alone: fastest of {bench.timing_reps}):\n\n"
            f"{timing}\n")
    print("\n" + text)
    suffix = "_quick" if quick else ""
    (out / f"finetune{suffix}.md").write_text(text)
    save_scaling_plot(out / f"scaling{suffix}.png", rows)
