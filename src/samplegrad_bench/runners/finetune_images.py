"""`samplegrad bench finetune-images`: reward finetuning of a Fashion-MNIST DDPM, every method.

The pretrained model is the conv U-Net DDPM of ``samplegrad train-ddpm --dataset fashion``
(28x28, [-1, 1]). Each run finetunes a copy of it toward one reward, with the path KL to the
pretrained model (weight ``lambda``), for ``theta_steps`` Adam steps of ``pop_size`` samples,
with one of the methods (all from the library, same optimizer, same KL):

* ``implicit``: Implicit Diffusion's queue (:mod:`samplegrad.implicit.finetune`, the
  library's default ``path_memory``); ``implicit-recompute``: the same with
  ``path_memory="recompute"`` when the library has it;
* ``unrolled``: full backprop through the T-step sampler; ``unrolled-ckpt``: the same with
  gradient checkpointing per step (AlignProp-style; DRaFT with K = T and ``checkpoint``);
* ``draft-1``, ``draft-5``: DRaFT-K, backprop through the last K steps only;
* ``ddpo``: DDPO's clipped policy gradient (the reward is only evaluated); ``ddpo-4``: the
  same with 4 inner epochs (4 optimizer steps on each batch of trajectories).

Rewards on the images: ``brightness`` (mean pixel in [0, 1], clamped), ``classifier`` (log
p(class) under :func:`samplegrad_bench.tasks.fashion.fashion_classifier`) and ``threshold``
(1 if the classifier's top class is the target, else 0: no useful gradient, so only the
gradient-free DDPO runs on it). After each run, on the same ``eval_n`` fixed-noise samples as
the pretrained model: the reward, p(class), brightness, the path KL to the pretrained model
and FD-classifier against held-out test images
(:func:`samplegrad_bench.tasks.fashion.fd_classifier`).

Cost: ``ms/θ step`` (median over the run's θ steps; the first excluded), the run's wall clock,
``peak autograd MiB`` (the most bytes autograd holds for backward at one moment during a θ
step, weights excluded, by a saved-tensor hook that counts live tensors; the activations
torch.utils.checkpoint recomputes during its backward are not seen by it) and ``peak RSS MiB``
(``VmHWM`` growth of this process during the run after a reset, every method having run two
untimed warm-up θ steps first at the runs' batch size; glibc's mmap threshold is pinned at
64 KiB so freed tensors go back to the OS and runs do not hide in each other's cache). The
load average is recorded with every run: the machine may be shared.

Rows are keyed by (reward, T, method, seed, lambda, theta steps, pop size, lr) and merged into
``finetune_images.json`` (``--quick``: ``finetune_images_quick.json``) after every run; a rerun
skips the keys already there (``--fresh`` reruns them), so several invocations (e.g. a grid at
small T, then a few θ steps at T = 100) build one result file. Plots and tables are made from
all rows.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import hashlib
import os
import statistics
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from samplegrad.checkpoint import load_cache, save_checkpoint
from samplegrad.diffusion import draw_noise, sample_path, sampling_schedule
from samplegrad.implicit.finetune import (
    FinetuneConfig,
    finetune_init,
    finetune_step,
    path_kl,
    unrolled_init,
    unrolled_step,
)
from samplegrad.implicit.finetune_baselines import (
    DDPOConfig,
    DraftConfig,
    ddpo_init,
    ddpo_step,
    draft_init,
    draft_step,
)
from samplegrad_bench._args import (
    MissingInputError,
    UsageError,
    comma_list,
    nonneg_float,
    positive_float,
    positive_int,
    seed_list,
)
from samplegrad_bench._common import (
    markdown_table,
    progress,
    pyplot,
    read_results,
    save_figure,
    write_json,
)
from samplegrad_bench.paths import cache_dir
from samplegrad_bench.runners.train_ddpm import (
    FASHION_QUICK,
    default_weights,
    image_grid,
    load_ddpm,
    train_ddpm,
)
from samplegrad_bench.tasks.fashion import CLASSES, fashion_classifier, fd_classifier, load_fashion

SHAPE = (1, 28, 28)
REWARDS = ("brightness", "classifier", "threshold")
GRADIENT_FREE = ("ddpo", "ddpo-4")  # the methods that can use the threshold reward
_HAS_PATH_MEMORY = "path_memory" in {f.name for f in dataclasses.fields(FinetuneConfig)}
METHODS = ("implicit", *(("implicit-recompute",) if _HAS_PATH_MEMORY else ()), "unrolled",
           "unrolled-ckpt", "draft-1", "draft-5", "ddpo", "ddpo-4")


@dataclass
class BenchConfig:
    """Settings of a `bench finetune-images` invocation (stored with its rows)."""

    n_steps: tuple[int, ...] = (10, 25, 50, 100)  # sampler steps T
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    rewards: tuple[str, ...] = REWARDS
    theta_steps: int = 20
    pop_size: int = 8
    kl_weight: float = 0.01  # lambda of the main grid
    kl_sweep: tuple[float, ...] = (0.1,)  # extra lambdas (classifier reward, first T)
    lr: dict = dataclasses.field(default_factory=lambda: {
        "brightness": 2e-5, "classifier": 2e-5, "threshold": 2e-5})  # 3e-4 collapses
    target_class: int = 1  # Trouser
    eval_n: int = 128
    n_reference: int = 2000  # held-out test images for FD-classifier
    # wall-clock seconds of one run (init included); θ steps are then at most theta_steps.
    # None: exactly theta_steps θ steps. Equal budgets compare methods at equal wall clock.
    time_budget: float | None = None


def quick_config() -> BenchConfig:
    return BenchConfig(n_steps=(3,), seeds=(0,), theta_steps=2, pop_size=4, eval_n=8,
                       n_reference=16)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                   help="pretrained Fashion-MNIST DDPM (default: the cache's checkpoints/"
                        "ddpm_fashion.pt from `samplegrad train-ddpm --dataset fashion`; quick: "
                        "ddpm_fashion_quick.pt, trained here in seconds if missing)")
    p.add_argument("--n-steps", type=comma_list(positive_int), default=None, metavar="T,...",
                   help="sampler steps T (default 10,25,50,100)")
    p.add_argument("--seeds", type=seed_list, default=None, metavar="S,...",
                   help="seeds (default 0,1,2)")
    p.add_argument("--methods", type=comma_list(str, METHODS), default=None, metavar="M,...",
                   help="methods, from " + ",".join(METHODS))
    p.add_argument("--rewards", type=comma_list(str, REWARDS), default=None, metavar="R,...",
                   help="rewards, from " + ",".join(REWARDS))
    p.add_argument("--theta-steps", type=positive_int, default=None, help="θ steps per run")
    p.add_argument("--pop-size", type=positive_int, default=None, help="samples per θ step")
    p.add_argument("--kl-weight", type=nonneg_float, default=None,
                   help="lambda of the main grid (default 0.01)")
    p.add_argument("--kl-sweep", type=comma_list(nonneg_float), default=None,
                   metavar="L,...", help="extra lambdas, run on the classifier reward at the "
                                         "first T (reward-KL curves)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate for every reward (default 2e-5)")
    p.add_argument("--target-class", type=int, choices=range(10), default=None, metavar="0-9",
                   help="class of the classifier rewards (default 1, Trouser)")
    p.add_argument("--eval-n", type=positive_int, default=None,
                   help="fixed-noise samples per evaluation (default 128)")
    p.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                   help="stop each run after this many wall-clock seconds (init included), "
                        "at most --theta-steps θ steps: methods compared at equal wall clock")
    p.add_argument("--fresh", action="store_true",
                   help="rerun the runs already in the results JSON")
    p.add_argument("--no-rss-probe", action="store_true",
                   help="keep glibc's default allocator and do not measure peak RSS (NaN): "
                        "the probe's small mmap threshold adds page faults, most to the "
                        "methods that allocate most (unrolled), so time ratios differ")


def _settings(args: argparse.Namespace) -> BenchConfig:
    cfg = quick_config() if args.quick else BenchConfig()
    over = {}
    for name in ("n_steps", "seeds", "methods", "rewards"):
        v = getattr(args, name, None)
        if v:
            over[name] = tuple(v)
    for name in ("theta_steps", "pop_size", "kl_weight", "target_class", "eval_n",
                 "time_budget"):
        v = getattr(args, name, None)
        if v is not None:
            over[name] = v
    if getattr(args, "kl_sweep", None) is not None:
        over["kl_sweep"] = tuple(args.kl_sweep)
    if getattr(args, "lr", None):
        over["lr"] = {r: args.lr for r in REWARDS}
    cfg = dataclasses.replace(cfg, **over)
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise UsageError(f"--methods: unknown {', '.join(bad)} (choose from {', '.join(METHODS)})")
    bad = [r for r in cfg.rewards if r not in REWARDS]
    if bad:
        raise UsageError(f"--rewards: unknown {', '.join(bad)} (choose from {', '.join(REWARDS)})")
    if any(m in GRADIENT_FREE for m in cfg.methods) and cfg.pop_size < 2:
        raise UsageError("--pop-size: DDPO needs at least 2 samples per θ step")
    return cfg


# ---------------------------------------------------------------- model, data, rewards
def load_or_train(weights: Path | None, quick: bool) -> tuple[torch.nn.Module, Tensor, Path]:
    """The pretrained Fashion-MNIST DDPM (``weights``, else the cache's; quick: the small
    stand-in, trained here if missing)."""
    if weights is None:
        weights = default_weights(quick, "fashion")
        if not weights.exists():
            if not quick:
                raise MissingInputError(
                    f"no Fashion-MNIST DDPM at {weights}; create it with `samplegrad "
                    "train-ddpm --dataset fashion` (or run with --quick)")
            print(f"finetune-images: training the quick stand-in DDPM -> {weights}")
            train_ddpm(FASHION_QUICK, weights, verbose=False)
    elif not Path(weights).exists():
        raise MissingInputError(f"--checkpoint: no DDPM weights at {weights}")
    model, alpha_bars, _ = load_ddpm(weights)
    return model, alpha_bars, Path(weights)


def make_rewards(classifier: torch.nn.Module, target: int) -> dict[str, Callable]:
    """The three rewards on images ``(N, 1, 28, 28)`` in [-1, 1] -> ``(N,)``."""
    def brightness(x: Tensor) -> Tensor:
        return ((x.clamp(-1, 1) + 1) / 2).flatten(1).mean(-1)

    def log_prob(x: Tensor) -> Tensor:
        return torch.log_softmax(classifier(x.clamp(-1, 1)), -1)[:, target]

    def threshold(x: Tensor) -> Tensor:  # a black-box score: no gradient flows
        with torch.no_grad():
            return (classifier(x.clamp(-1, 1)).argmax(-1) == target).to(x.dtype)

    return {"brightness": brightness, "classifier": log_prob, "threshold": threshold}


# ---------------------------------------------------------------- methods
def _base_cfg(method: str, pop: int, lr: float, kl: float, seed: int) -> FinetuneConfig:
    common = {"pop_size": pop, "lr": lr, "kl_weight": kl, "seed": seed}
    if method == "implicit":
        return FinetuneConfig(**common)
    if method == "implicit-recompute":
        return FinetuneConfig(**common, path_memory="recompute")
    if method == "unrolled":
        return FinetuneConfig(**common)
    if method == "unrolled-ckpt":
        return DraftConfig(**common, grad_steps=None, checkpoint=True)
    if method.startswith("draft-"):
        return DraftConfig(**common, grad_steps=int(method.split("-")[1]))
    if method.startswith("ddpo"):
        epochs = int(method.split("-")[1]) if "-" in method else 1
        return DDPOConfig(**common, inner_epochs=epochs)
    raise ValueError(f"method: unknown {method!r}")


def make_method(method: str, model: torch.nn.Module, sched, cfg: FinetuneConfig,
                reward_fn: Callable) -> Callable:
    """``step()`` -> info: one θ step of ``method`` on ``model`` (trained in place)."""
    if method.startswith("implicit"):
        state = [finetune_init(model, sched, cfg, SHAPE)]
        fn = finetune_step
    elif method == "unrolled":
        state, fn = [unrolled_init(model, cfg, SHAPE)], unrolled_step
    elif method.startswith("ddpo"):
        state, fn = [ddpo_init(model, cfg, SHAPE)], ddpo_step
    else:
        state, fn = [draft_init(model, cfg, SHAPE)], draft_step

    def step() -> dict:
        state[0], info = fn(state[0], model, sched, reward_fn, cfg)
        return info

    return step


# ---------------------------------------------------------------- memory probes
@contextmanager
def live_saved_bytes(exclude: list[Tensor]) -> Iterator[dict[str, int]]:
    """Peak bytes of the tensors autograd holds for backward at one moment inside the block
    (storages counted once while alive; ``exclude``'s storages, the weights, not counted)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    live: dict[int, list] = {}  # storage ptr -> [refcount, nbytes]
    stats = {"bytes": 0, "peak": 0}

    class _Held:
        __slots__ = ("t", "key", "__weakref__")

    def release(key: int) -> None:
        ent = live.get(key)
        if ent is None:
            return
        ent[0] -= 1
        if ent[0] == 0:
            stats["bytes"] -= ent[1]
            del live[key]

    def pack(t: Tensor) -> _Held:
        h = _Held()
        h.t, h.key = t, None
        try:
            key = t.untyped_storage().data_ptr()
        except RuntimeError:
            return h
        if key in skip:
            return h
        h.key = key
        if key in live:
            live[key][0] += 1
        else:
            live[key] = [1, t.untyped_storage().nbytes()]
            stats["bytes"] += live[key][1]
            stats["peak"] = max(stats["peak"], stats["bytes"])
        weakref.finalize(h, release, key)
        return h

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        yield stats


def _pin_malloc() -> None:
    """glibc: serve every allocation over 64 KiB by mmap, so that freed tensors leave RSS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _status_kib(name: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, params, ref, sched, noise, rewards, classifier, target, reference
             ) -> tuple[dict, Tensor]:
    """Metrics of the samples on ``noise`` under ``params``; also the samples."""
    f = lambda x, t: torch.func.functional_call(model, params, (x, t))  # noqa: E731
    path = sample_path(f, noise, sched)
    x0 = path[0]
    probs = torch.softmax(classifier(x0.clamp(-1, 1)), -1)
    out = {f"reward_{k}": fn(x0).mean().item() for k, fn in rewards.items()}
    out.update({"p_class": probs[:, target].mean().item(),
                "path_kl": path_kl(model, params, ref, path, sched).mean().item(),
                "fd": fd_classifier(x0, reference, classifier)})
    return out, x0


def _params(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def run_one(method: str, model, ref, sched, reward_fn, cfg: FinetuneConfig, steps: int,
            desc: str, budget: float | None = None, rss: bool = True
            ) -> tuple[dict, dict, list]:
    """Finetune a copy of ``model`` for ``steps`` θ steps, or fewer once ``budget`` seconds
    of wall clock (init included) have passed: (final params, cost measurements, trace
    rows)."""
    model = copy.deepcopy(model).requires_grad_(True)
    weights = list(model.parameters())
    rss_reset = rss and _reset_peak_rss()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    step = make_method(method, model, sched, cfg, reward_fn)
    init_s = time.perf_counter() - t0
    times, trace, peak_graph = [], [], 0
    for i in progress(range(steps), desc=desc):
        with live_saved_bytes(weights + [p for p in ref.values()]) as m:
            t1 = time.perf_counter()
            info = step()
            dt = time.perf_counter() - t1
        peak_graph = max(peak_graph, m["peak"])
        times.append(dt)
        trace.append({"step": i + 1, "wall_s": time.perf_counter() - t0,
                      "reward": info["reward"], "kl": info["kl"]})
        if budget is not None and trace[-1]["wall_s"] >= budget:
            break
    rss_peak = _status_kib("VmHWM") if rss_reset else float("nan")
    ts = sorted(times[1:] or times)
    cost = {"init_s": init_s, "total_s": time.perf_counter() - t0,
            "step_ms": 1e3 * ts[len(ts) // 2], "step_ms_mean": 1e3 * sum(times) / len(times),
            "peak_autograd_mib": peak_graph / 2**20,
            "peak_rss_mib": (rss_peak - rss0) / 1024, "rss_probe": rss,
            "theta_steps_done": len(trace)}
    return _params(model), cost, trace


# ---------------------------------------------------------------- the grid
def _key(r: dict) -> str:
    key = "|".join(str(r[k]) for k in ("reward_name", "T", "method", "seed", "kl_weight",
                                        "theta_steps", "pop_size", "lr"))
    return key if r.get("time_budget") is None else f"{key}|budget{r['time_budget']:g}"


def _pre_key(t_total: int, eval_n: int) -> str:
    """Key of the pretrained model's metrics at ``T`` on ``eval_n`` evaluation samples (files
    written before the size was part of it have ``T{T}`` keys with an ``eval_n`` field)."""
    return f"T{t_total}|n{eval_n}"


def _pre_t(key: str) -> int:
    """The T of a pretrained-metrics key (``T{T}|n{eval_n}``, or an older file's ``T{T}``)."""
    return int(key.split("|")[0][1:])


def _budget(steps: tuple) -> str:
    """Title/file-name part of a group's ``(theta_steps, lr, time_budget)``."""
    return "" if steps[2] is None else f"_budget{steps[2]:g}s"


def plan(bench: BenchConfig) -> list[dict]:
    """The runs of an invocation: every (reward, T, method, seed) at the main lambda (DDPO only
    on the threshold reward), then the lambda sweep on the classifier reward at the first T."""
    jobs = []
    for reward in bench.rewards:
        for t_total in bench.n_steps:
            for method in bench.methods:
                if reward == "threshold" and method not in GRADIENT_FREE:
                    continue
                for seed in bench.seeds:
                    jobs.append({"reward_name": reward, "T": t_total, "method": method,
                                 "seed": seed, "kl_weight": bench.kl_weight})
    if "classifier" in bench.rewards:
        for lam in bench.kl_sweep:
            if lam == bench.kl_weight:
                continue
            for method in bench.methods:
                for seed in bench.seeds[:1]:
                    jobs.append({"reward_name": "classifier", "T": bench.n_steps[0],
                                 "method": method, "seed": seed, "kl_weight": lam})
    for j in jobs:
        j.update(theta_steps=bench.theta_steps, pop_size=bench.pop_size,
                 lr=bench.lr[j["reward_name"]])
        if bench.time_budget is not None:
            j["time_budget"] = bench.time_budget
    return jobs


def _images_dir(weights: Path) -> Path:
    """Cache folder of the sample images of the runs on ``weights`` (one file per run, so
    that any invocation, or several at once, can draw every run's grid)."""
    w = Path(weights).resolve()
    stamp = f"{w}|{w.stat().st_mtime_ns if w.exists() else 0}"
    return cache_dir("finetune-images") / hashlib.sha1(stamp.encode()).hexdigest()[:16]


def _image_file(folder: Path, key: str) -> Path:
    return folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"


def _load_images(folder: Path, keys: list[str]) -> dict[str, Tensor]:
    out = {}
    for k in keys:
        blob = load_cache(_image_file(folder, k), weights_only=True, check=lambda b: b["x"])
        if blob is not None:
            out[k] = blob["x"]
    return out


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock for the results file ``path`` (several invocations may write it at
    once); the lock file lives in the cache."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent writers supported
        yield
        return
    key = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
    lock = cache_dir("finetune-images") / f"results_{key}.lock"  # never in the checkout
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or 1)
    rss_probe = not getattr(args, "no_rss_probe", False)
    if rss_probe:
        _pin_malloc()
    bench = _settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    json_path = out / f"finetune_images{suffix}.json"
    model, alpha_bars, weights = load_or_train(args.checkpoint, args.quick)
    try:
        classifier = fashion_classifier(quick=args.quick)
        reference = load_fashion("test", bench.n_reference)[0]
    except FileNotFoundError as e:
        raise MissingInputError(str(e)) from None
    ref = _params(model)
    rewards = make_rewards(classifier, bench.target_class)
    meta = {"weights": str(weights), "classifier_accuracy": classifier.accuracy,
            "target_class": f"{bench.target_class} ({CLASSES[bench.target_class]})",
            "n_reference": len(reference), "threads": torch.get_num_threads(),
            "n_params": sum(p.numel() for p in model.parameters()), "rss_probe": rss_probe,
            "last_settings": asdict(bench)}
    print(f"bench finetune-images: {bench}\n  weights {weights} ({meta['n_params']} "
          f"parameters), classifier test accuracy {classifier.accuracy:.3f}")
    rows: list[dict] = []
    evals: dict = {}
    images_dir = _images_dir(weights)
    jobs = plan(bench)
    redo = {_key(j) for j in jobs} if args.fresh else set()

    ran: set[str] = set()  # the keys this invocation has run: only these win over the file

    def merge() -> None:
        """Rows and pretrained metrics from the file (another invocation may have added or
        rerun some since we last read it): the file's rows win except for the runs made
        here; the runs ``--fresh`` redoes are dropped from the file's."""
        if not json_path.exists():
            return
        old = read_results(json_path, "rows", list)
        rows[:] = [r for r in rows if _key(r) in ran]
        rows.extend(r for r in old["rows"] if _key(r) not in ran and _key(r) not in redo)
        for k, v in old.get("pretrained", {}).items():
            evals.setdefault(_pre_key(_pre_t(k), v["eval_n"]), v)

    def dump() -> None:
        with _locked(json_path):
            merge()
            rows.sort(key=lambda r: (r["reward_name"], r["T"], r["kl_weight"], r["method"],
                                     r["seed"]))
            write_json(json_path, {"meta": meta, "pretrained": evals, "rows": rows})

    with _locked(json_path):
        merge()
    done = {_key(r) for r in rows}
    # Warm-up, untimed: two θ steps of every method at the runs' batch size (T at most 10),
    # so lazy library set-up, allocator growth and first-call costs land in no run's time
    # or memory (with one tiny step, the first timed runs were up to 1.6x slower).
    warm = sampling_schedule(alpha_bars, min(10, *bench.n_steps))
    for method in progress(sorted(set(bench.methods)), desc="warm-up"):
        run_one(method, model, ref, warm, rewards["classifier"],
                _base_cfg(method, bench.pop_size, 1e-6, bench.kl_weight, 0), 2, "")

    for job in progress(jobs, desc="finetune-images"):
        t_total, seed = job["T"], job["seed"]
        sched = sampling_schedule(alpha_bars, t_total)
        noise = draw_noise(sched, bench.eval_n, SHAPE,
                           torch.Generator(device="cpu").manual_seed(10_000 + t_total))
        # the pretrained model on the same noise: per T and evaluation size (the noise of
        # another size is other noise), also when every run of the job is already done
        pre_key = _pre_key(t_total, bench.eval_n)
        pre_img = f"pretrained|{pre_key}"
        if pre_key not in evals or not _image_file(images_dir, pre_img).exists():
            evals[pre_key], x_pre = evaluate(model, ref, ref, sched, noise, rewards, classifier,
                                             bench.target_class, reference)
            evals[pre_key]["eval_n"] = bench.eval_n
            save_checkpoint(_image_file(images_dir, pre_img), {"x": x_pre[:64].clone()},
                            keep_previous=False)
        if _key(job) in done:
            continue
        cfg = _base_cfg(job["method"], job["pop_size"], job["lr"], job["kl_weight"], seed)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        torch.manual_seed(seed)
        params, cost, trace = run_one(job["method"], model, ref, sched,
                                      rewards[job["reward_name"]], cfg, job["theta_steps"],
                                      f"{job['reward_name']} T={t_total} {job['method']} "
                                      f"s{seed} λ={job['kl_weight']}",
                                      job.get("time_budget"), rss_probe)
        after, x0 = evaluate(model, params, ref, sched, noise, rewards, classifier,
                             bench.target_class, reference)
        row = {**job, **after, **cost, "eval_n": bench.eval_n, "load_avg": load, "trace": trace,
               "reward_before": evals[pre_key][f"reward_{job['reward_name']}"],
               "reward_after": after[f"reward_{job['reward_name']}"],
               "fd_before": evals[pre_key]["fd"], "p_class_before": evals[pre_key]["p_class"],
               "diverged": not all(map(_finite, (after["path_kl"], after["fd"])))}
        rows.append(row)
        done.add(_key(row))
        ran.add(_key(row))
        save_checkpoint(_image_file(images_dir, _key(row)), {"x": x0[:64].clone()},
                        keep_previous=False)
        dump()
    dump()
    keys = [_key(r) for r in rows] + [f"pretrained|{k}" for k in evals]
    images = _load_images(images_dir, keys)
    report(rows, evals, images, meta, out, suffix)
    return {"meta": meta, "rows": rows}


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


# ---------------------------------------------------------------- report
def _ms(vals: list[float]) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.4g}"
    return f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"


def _steps(r: dict) -> tuple:
    """A run's ``(theta_steps, lr, time_budget)``: what its θ-step count depends on."""
    return r["theta_steps"], r["lr"], r.get("time_budget")


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    g: dict[tuple, list[dict]] = {}
    for r in rows:
        g.setdefault((r["reward_name"], r["T"], r["kl_weight"], _steps(r), r["method"]),
                     []).append(r)
    return g


def summary_table(rows: list[dict]) -> str:
    out = []
    for (reward, t_total, lam, steps, method), rs in _groups(rows).items():
        out.append({"reward": reward, "T": t_total, "λ": lam, "θ steps": steps[0],
                    "lr": steps[1], "budget s": "" if steps[2] is None else f"{steps[2]:g}",
                    "steps done": _ms([r.get("theta_steps_done", r["theta_steps"])
                                       for r in rs]),
                    "method": method, "seeds": len(rs),
                    "reward before": _ms([r["reward_before"] for r in rs]),
                    "reward after": _ms([r["reward_after"] for r in rs]),
                    "p(class)": _ms([r["p_class"] for r in rs]),
                    "path KL": _ms([r["path_kl"] for r in rs]),
                    "FD before": _ms([r["fd_before"] for r in rs]),
                    "FD after": _ms([r["fd"] for r in rs]),
                    "ms/θ step": _ms([r["step_ms"] for r in rs]),
                    "peak autograd MiB": _ms([r["peak_autograd_mib"] for r in rs]),
                    "peak RSS MiB": _ms([r["peak_rss_mib"] for r in rs]),
                    "load": _ms([r["load_avg"] for r in rs])})
    return markdown_table(out)


def ratio_table(rows: list[dict]) -> str:
    """Each method's time per θ step and peak memories relative to ``unrolled`` at the same
    (reward, T, λ, θ steps), seed by seed (same process, next to each other)."""
    by = {(r["reward_name"], r["T"], r["kl_weight"], _steps(r), r["seed"], r["method"]): r
          for r in rows}
    out = []
    for (reward, t_total, lam, steps, method), rs in _groups(rows).items():
        if method == "unrolled":
            continue
        pairs = [(r, by.get((reward, t_total, lam, steps, r["seed"], "unrolled"))) for r in rs]
        pairs = [(a, b) for a, b in pairs if b is not None]
        if not pairs:
            continue
        out.append({"reward": reward, "T": t_total, "λ": lam, "θ steps": steps[0],
                    "lr": steps[1], "budget s": "" if steps[2] is None else f"{steps[2]:g}",
                    "method": method, "pairs": len(pairs),
                    "time/θ step ÷ unrolled": _ms([a["step_ms"] / b["step_ms"] for a, b in pairs]),
                    "autograd ÷ unrolled": _ms([a["peak_autograd_mib"] /
                                               max(b["peak_autograd_mib"], 1e-9)
                                               for a, b in pairs]),
                    "RSS ÷ unrolled": _ms([a["peak_rss_mib"] / b["peak_rss_mib"]
                                           for a, b in pairs if b["peak_rss_mib"] > 0]),
                    "reward gain ÷ unrolled's": _ms([
                        (a["reward_after"] - a["reward_before"]) /
                        (b["reward_after"] - b["reward_before"])
                        for a, b in pairs if b["reward_after"] != b["reward_before"]])})
    return markdown_table(out)


def _mean_trace(rs: list[dict], key: str) -> tuple[list[float], list[float]]:
    n = min(len(r["trace"]) for r in rs)
    xs = [statistics.mean(r["trace"][i][key] for r in rs) for i in range(n)]
    ys = [statistics.mean(r["trace"][i]["reward"] for r in rs) for i in range(n)]
    return xs, ys


def save_curves(out: Path, rows: list[dict], suffix: str) -> list[Path]:
    """Training reward against θ steps and against wall clock (seed mean), per (reward, T)."""
    plt = pyplot()
    paths = []
    main = {}
    for (reward, t_total, lam, steps, method), rs in _groups(rows).items():
        main.setdefault((reward, t_total, lam, steps), {})[method] = rs
    lam0 = {}
    for (reward, t_total, lam, steps) in main:
        lam0.setdefault((reward, t_total, steps), []).append(lam)
    for (reward, t_total, lam, steps), by_method in main.items():
        if lam != statistics.median_low(lam0[(reward, t_total, steps)]):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for method, rs in sorted(by_method.items()):
            for ax, key in zip(axes, ("step", "wall_s")):
                xs, ys = _mean_trace(rs, key)
                ax.plot(xs, ys, label=f"{method} ({len(rs)} seeds)")
        axes[0].set_xlabel("θ steps")
        axes[1].set_xlabel("wall clock (s, incl. init)")
        for ax in axes:
            ax.set_ylabel(f"training reward ({reward})")
        axes[1].legend(fontsize=7)
        cap = "" if steps[2] is None else f", {steps[2]:g} s budget"
        fig.suptitle(f"{reward}, T={t_total}, λ={lam}, {steps[0]} θ steps{cap}, lr "
                     f"{steps[1]}", fontsize=10)
        p = out / (f"curves_{reward}_T{t_total}_steps{steps[0]}_lr{steps[1]}{_budget(steps)}"
                   f"{suffix}.png")
        save_figure(fig, p)
        paths.append(p)
    return paths


def save_reward_kl(out: Path, rows: list[dict], suffix: str) -> list[Path]:
    """Final reward against final path KL over the lambdas, per method (seed mean)."""
    plt = pyplot()
    paths = []
    by: dict = {}
    for (reward, t_total, lam, steps, method), rs in _groups(rows).items():
        by.setdefault((reward, t_total, steps), {}).setdefault(method, []).append(
            (statistics.mean(r["path_kl"] for r in rs),
             statistics.mean(r["reward_after"] for r in rs), lam))
    for (reward, t_total, steps), methods in by.items():
        if max(len(v) for v in methods.values()) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for method, pts in sorted(methods.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.set_xlabel("path KL to the pretrained model")
        ax.set_ylabel(f"reward after ({reward})")
        cap = (f"{steps[0]} θ steps" if steps[2] is None else
               f"{steps[2]:g} s of wall clock each")
        ax.set_title(f"reward-KL over λ: {reward}, T={t_total}, {cap}, lr {steps[1]}",
                     fontsize=9)
        ax.legend(fontsize=7)
        p = out / f"reward_kl_{reward}_T{t_total}_lr{steps[1]}{_budget(steps)}{suffix}.png"
        save_figure(fig, p)
        paths.append(p)
    return paths


def save_scaling(out: Path, rows: list[dict], suffix: str) -> Path:
    """Time per θ step and peak memories against T (brightness reward, seed means)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    keys = (("step_ms", "ms per θ step"), ("peak_autograd_mib", "peak autograd MiB"),
            ("peak_rss_mib", "peak RSS growth MiB"))
    by: dict = {}
    for r in rows:
        if r["reward_name"] == "brightness":
            by.setdefault(r["method"], {}).setdefault(r["T"], []).append(r)
    for ax, (key, label) in zip(axes, keys):
        drawn = False
        for method, per_t in sorted(by.items()):
            pts = [(t, statistics.mean(vs)) for t in sorted(per_t)
                   if (vs := [r[key] for r in per_t[t]
                              if r.get(key) is not None and _finite(r[key]) and r[key] > 0])]
            if pts:  # RSS is not measured with --no-rss-probe; log axes need values > 0
                ax.plot(*zip(*pts), "o-", label=method)
                drawn = True
        ax.set_xlabel("sampler steps T")
        ax.set_ylabel(label)
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    axes[0].legend(fontsize=7)
    p = out / f"scaling{suffix}.png"
    save_figure(fig, p)
    return p


def save_grids(out: Path, rows: list[dict], images: dict, suffix: str) -> list[Path]:
    """Samples on the same noise: pretrained and each method (first seed, main λ)."""
    plt = pyplot()
    paths = []
    seen: dict = {}
    sizes: dict = {}  # (reward, T, λ, steps) -> the rows' evaluation size
    first_seed: dict = {}
    for r in rows:
        g = (r["reward_name"], r["T"], r["kl_weight"], _steps(r), r["method"])
        first_seed[g] = min(first_seed.get(g, r["seed"]), r["seed"])
    for r in rows:
        k = _key(r)
        g = (r["reward_name"], r["T"], r["kl_weight"], _steps(r), r["method"])
        if k in images and r["seed"] == first_seed[g]:
            seen.setdefault(g[:4], []).append((r["method"], images[k]))
            if "eval_n" in r:  # rows written before it was stored: any pretrained grid
                sizes[g[:4]] = r["eval_n"]
    for (reward, t_total, lam, steps), ims in seen.items():
        n = sizes.get((reward, t_total, lam, steps))
        pre = images.get(f"pretrained|{_pre_key(t_total, n)}") if n else next(
            (v for k, v in images.items() if k.startswith(f"pretrained|T{t_total}|")), None)
        panels = ([("pretrained", pre)] if pre is not None else []) + sorted(
            ims, key=lambda m: METHODS.index(m[0]) if m[0] in METHODS else 99)
        fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.9),
                                 squeeze=False)
        for ax, (name, x) in zip(axes[0], panels):
            ax.imshow(image_grid(x[:32], cols=4).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
        after = f"{steps[0]} θ steps" if steps[2] is None else f"{steps[2]:g} s"
        fig.suptitle(f"{reward}, T={t_total}, λ={lam}, lr {steps[1]}, after {after} (same "
                     "noise)", fontsize=9)
        p = out / (f"samples_{reward}_T{t_total}_lam{lam}_steps{steps[0]}_lr{steps[1]}"
                   f"{_budget(steps)}{suffix}.png")
        save_figure(fig, p)
        paths.append(p)
    return paths


def report(rows: list[dict], evals: dict, images: dict, meta: dict, out: Path,
           suffix: str) -> None:
    pre = markdown_table([{"T": _pre_t(k), **e} for k, e in sorted(
        evals.items(), key=lambda kv: (_pre_t(kv[0]), kv[1]["eval_n"]))])
    text = (f"Pretrained model: {meta['weights']} ({meta['n_params']} parameters); "
            f"classifier test accuracy {meta['classifier_accuracy']:.4f}; target class "
            f"{meta['target_class']}; FD-classifier against {meta['n_reference']} held-out "
            f"test images.\n\nPretrained model on the evaluation noise:\n\n{pre}\n\n"
            f"All runs (mean ± sd over seeds):\n\n{summary_table(rows)}\n\n"
            f"Ratios to unrolled (same reward, T, λ, seed):\n\n{ratio_table(rows)}\n")
    print("\n" + text)
    (out / f"finetune_images{suffix}.md").write_text(text)
    if rows:
        save_curves(out, rows, suffix)
        save_reward_kl(out, rows, suffix)
        save_scaling(out, rows, suffix)
        save_grids(out, rows, images, suffix)
