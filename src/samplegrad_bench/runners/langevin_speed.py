"""Milliseconds per theta step of the single-loop Langevin optimizer, eager and compiled,
against a jitted implementation of the same math (docs/benchmarks/langevin.md#speed).

The problem of `bench langevin` (hexagon mixture, its reward, 1000 particles, gamma = 0.2,
SGD lr 0.1), one thread by default. In one process, interleaved, median over repeats:

* ``samplegrad step``: :func:`samplegrad.implicit.langevin.step`, eager (value checks on,
  as a user gets it, and off with ``sg.validation(False)``) and with
  ``LangevinConfig(compile=True)`` (inductor), checks on and off;
* ``reference, jitted``: the same math (one ULA step, the rewards, the covariance gradient
  in theta, the SGD update) written as one plain function and compiled with
  ``torch.compile(fullgraph=True)``: what a hand-written jitted step costs;
* ``reference, eager``: the same plain function with autograd, uncompiled.

Ratios are to the jitted reference. A torch.profiler table of the eager library step (the
top operators by self time) is written beside the JSON, so the cost can be read by op.
Writes ``langevin_step_speed.json`` (``--quick``: ``..._quick.json``, few repeats,
``aot_eager``) into ``runs/langevin-speed/`` (``--publish``: ``docs/results/langevin/``).

    samplegrad bench langevin-speed [--quick] [--repeats N] [--n-particles N] [--threads T]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch

import samplegrad as sg
from samplegrad.implicit.langevin import LangevinConfig, init, step
from samplegrad_bench._args import positive_int
from samplegrad_bench._common import markdown_table, write_json
from samplegrad_bench.tasks.mixtures import HEXAGON_THETA_INIT, hexagon_reward, mixture_potential

BASE = "reference, jitted"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed theta steps per candidate (default 400; quick 5)")
    p.add_argument("--n-particles", type=positive_int, default=None,
                   help="particles (default 1000)")


def _plain_step(gamma: float, lr: float) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The single loop's math as one plain function (autograd through torch.func.grad)."""
    def theta_step(x: torch.Tensor, theta: torch.Tensor, z: torch.Tensor):
        gx = torch.func.grad(lambda y: mixture_potential(y, theta).sum())(x)
        x = x - gamma * gx + math.sqrt(2 * gamma) * z
        r = hexagon_reward(x)
        w = (r - r.mean()) / (x.shape[0] - 1)
        g = torch.func.grad(lambda t: (w * mixture_potential(x, t)).sum())(theta)
        return x, theta - lr * g, r.mean()

    return theta_step


def _plain_eager_step(gamma: float, lr: float) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The same math with ``torch.autograd.grad`` (the faster route in eager mode)."""
    def theta_step(x: torch.Tensor, theta: torch.Tensor, z: torch.Tensor):
        xg = x.requires_grad_(True)
        (gx,) = torch.autograd.grad(mixture_potential(xg, theta).sum(), xg)
        x = (x - gamma * gx + math.sqrt(2 * gamma) * z).detach()
        r = hexagon_reward(x)
        w = (r - r.mean()) / (x.shape[0] - 1)
        th = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((w * mixture_potential(x, th)).sum(), th)
        return x, (theta - lr * g).detach(), r.mean()

    return theta_step


def _profile_table(cfg: LangevinConfig, n_particles: int, rows: int = 15) -> str:
    state = init(mixture_potential, torch.tensor(HEXAGON_THETA_INIT), cfg, shape=2, seed=1)
    for _ in range(20):
        state, _ = step(state, mixture_potential, hexagon_reward, cfg)
    with torch.profiler.profile() as prof:
        for _ in range(100):
            state, _ = step(state, mixture_potential, hexagon_reward, cfg)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    threads = args.threads or 1
    torch.set_num_threads(threads)
    repeats = args.repeats or (5 if args.quick else 400)
    n = args.n_particles or (64 if args.quick else 1000)
    backend = "aot_eager" if args.quick else "inductor"
    cfg = LangevinConfig(n_particles=n)
    ccfg = dataclasses.replace(cfg, compile=backend)
    theta0 = torch.tensor(HEXAGON_THETA_INIT)

    states = {"eager": init(mixture_potential, theta0, cfg, shape=2, seed=args.seed),
              "compiled": init(mixture_potential, theta0, ccfg, shape=2, seed=args.seed)}
    jitted = torch.compile(_plain_step(cfg.step_size, cfg.lr), backend=backend,
                           fullgraph=True)
    plain = _plain_eager_step(cfg.step_size, cfg.lr)
    ref = {"x": states["eager"].x.clone(), "theta": theta0.clone()}
    gen = torch.Generator().manual_seed(args.seed)

    def lib(mode: str, checks: bool) -> Callable[[], None]:
        c = cfg if mode == "eager" else ccfg

        def go() -> None:
            with sg.validation(checks):
                states[mode], _ = step(states[mode], mixture_potential, hexagon_reward, c)
        return go

    def reference(fn: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[[], None]:
        def go() -> None:
            z = torch.randn(ref["x"].shape, generator=gen)
            x, theta, mean_r = fn(ref["x"], ref["theta"], z)
            float(mean_r)  # the library step reads the mean reward back too
            ref["x"], ref["theta"] = x.detach(), theta.detach()
        return go

    cands: dict[str, Callable[[], None]] = {
        "samplegrad step, eager": lib("eager", True),
        "samplegrad step, eager, checks off": lib("eager", False),
        "samplegrad step, compiled": lib("compiled", True),
        "samplegrad step, compiled, checks off": lib("compiled", False),
        BASE: reference(jitted),
        "reference, eager": reference(plain),
    }
    t0 = time.perf_counter()
    for go in cands.values():  # compile + warm up
        for _ in range(3):
            go()
    warm_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(repeats):
        for k, go in cands.items():
            t = time.perf_counter()
            go()
            times[k].append(time.perf_counter() - t)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    rows = [{"candidate": k, "ms per theta step": med[k], f"/ {BASE}": med[k] / med[BASE]}
            for k in cands]
    print(f"\nLangevin theta step: hexagon mixture, {n} particles, {threads} thread(s), "
          f"median of {repeats} (compile + warm-up {warm_s:.1f} s, backend {backend})\n")
    print(markdown_table(rows))
    profile = _profile_table(cfg, n)
    print("\nprofile of the eager library step (100 steps, checks on):\n")
    print(profile)
    res = {"n_particles": n, "threads": threads, "repeats": repeats, "backend": backend,
           "torch": torch.__version__, "machine": platform.machine(),
           "rows": rows, "ms": med,
           "final_reward": {"samplegrad eager": float(hexagon_reward(states["eager"].x).mean()),
                            "reference": float(hexagon_reward(ref["x"]).mean())}}
    name = "langevin_step_speed_quick" if args.quick else "langevin_step_speed"
    (args.out / f"{name}_profile.txt").parent.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}_profile.txt").write_text(profile + "\n")
    print(f"\nwrote {write_json(args.out / f'{name}.json', res)}")
    return res


if __name__ == "__main__":  # same as `samplegrad bench langevin-speed ...`
    import sys

    from samplegrad_bench.cli import main

    raise SystemExit(main(["bench", "langevin-speed", *sys.argv[1:]]))
