"""`samplegrad demo`: a one-minute tour of the three systems, on data that ships with the code.

1. **Categorical gradients**: every estimator at its default knobs (ReDGE and its variants,
   the classic estimators, and the peer PyPI ``redge`` when installed), scored twice: the
   exact expected loss Adam reaches on a polynomial program of binary variables
   (:mod:`samplegrad_bench.tasks.polyprog`), and the MSE of single gradient estimates on a
   small MLP objective against its exact gradient
   (:mod:`samplegrad_bench.tasks.gradient_problems`). One table, both scores side by side.
2. **Implicit Diffusion**: reward training of the mixture logits of a Langevin sampler on
   the hexagon mixture (:mod:`samplegrad_bench.tasks.mixtures`): the single loop
   (:func:`samplegrad.implicit.langevin.step`) against backprop through unrolled Langevin
   steps (:func:`samplegrad.implicit.langevin_baselines.unrolled_step`), each given the same
   wall-clock budget; the exact expected reward each reaches and the speed-up.
3. **Optimization-free diffusion**: :func:`samplegrad.spectral.fit` on the 8x8 digits in
   principal-component space, sampled and compared to held-out digits against a Gaussian.

Writes ``demo.png`` (a panel per part) and ``demo.json`` (every number) into ``runs/demo/``
(or ``--out``; ``--publish``: ``docs/results/demo/``). One torch thread unless ``--threads``
(the problems are small). The full versions are the benchmarks ``gradients``, ``polyprog``,
``langevin`` and ``spectral``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from samplegrad_bench._args import int_at_least, positive_float, positive_int

# The demo's tensors are small. With more than one torch thread, an OpenMP worker that spins
# while it waits competes with the main thread for a busy core (on a loaded 2-core machine,
# `--threads 2` ran 10-50x slower than one thread); let idle workers sleep instead. Only
# when this module is imported before torch (the `samplegrad demo` command); an
# OMP_WAIT_POLICY of your own wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=None,
                   help="Adam steps on the polynomial program (default 300; quick 30)")
    p.add_argument("--power", type=positive_float, default=None,
                   help="loss power p of the polynomial program (default 2)")
    p.add_argument("--draws", type=int_at_least(2), default=None,
                   help="gradient draws per estimator (default 2000; quick 60)")
    p.add_argument("--budget", type=positive_float, default=None, metavar="SECONDS",
                   help="wall-clock seconds for each Langevin method (default 6; quick 0.4)")


def _config(args: argparse.Namespace):
    from samplegrad_bench.runners import _demo_parts as parts

    cfg = parts.QUICK if args.quick else parts.DemoConfig()
    kw = {k: v for k, v in (("steps", args.steps), ("power", args.power),
                            ("draws", args.draws), ("budget_s", args.budget)) if v is not None}
    return replace(cfg, **kw)


# ---- printing ------------------------------------------------------------------------------
def _print_categorical(s: dict[str, Any], seed: int) -> None:
    from samplegrad_bench._common import markdown_table

    p, g = s["polynomial_program"], s["gradient_problem"]
    print(f"\n1/3 Categorical gradients, every estimator at its default knobs (seed {seed}).\n"
          f"final E[loss]: Adam (lr {p['lr']:g}, {p['batch']} samples/step, {p['steps']} steps) "
          f"on L={p['n_vars']} binary variables, loss mean_d |x_d - 0.45|^{p['power']:g}; exact "
          f"at the final logits (start {p['start']:.4f}, optimum {p['optimum']:.4f}).\n"
          f"gradient MSE: {g['draws']} independent single estimates (RLOO: 2 samples) against "
          f"the exact gradient of a {g['description']} (‖g‖² = {g['grad_norm2']:.4g}). "
          f"REINFORCE trains with an EMA baseline (0.9), its gradient MSE has none.\n")
    cols = ["family", "estimator", "knobs", "final E[loss]", "gap to optimum", "gradient MSE",
            "cosine"]
    print(markdown_table(s["rows"], cols))
    best_loss = min(s["rows"], key=lambda r: r["final E[loss]"])["estimator"]
    best_mse = min(s["rows"], key=lambda r: r["gradient MSE"])["estimator"]
    print(f"lowest final loss: {best_loss}; lowest gradient MSE: {best_mse}")


def _print_implicit(s: dict[str, Any]) -> None:
    from samplegrad_bench._common import markdown_table

    st = s["settings"]
    print(f"\n2/3 Implicit Diffusion: reward training of the mixture logits theta of six Gaussians "
          f"on a hexagon, ULA (gamma {st['step_size']:g}, {st['n_particles']} particles), SGD "
          f"lr {st['theta_lr']:g}; {st['budget_s']:g} s of wall clock for each method. "
          f"exact E[R] is the closed form at theta (start {s['start exact E[R]']:.4f}, best "
          f"possible {s['best possible E[R]']:.4f}).\n")
    rows = [{"method": name, **{k: v for k, v in m.items() if k != "softmax(theta)"},
             "softmax(theta)": "[" + ", ".join(f"{w:.2f}" for w in m["softmax(theta)"]) + "]"}
            for name, m in s["methods"].items()]
    print(markdown_table(rows))
    single, unrolled = rows
    print(f"In the same budget the single loop gained {single['gain in E[R]']:+.4f} in exact "
          f"E[R], unrolled backprop {unrolled['gain in E[R]']:+.4f}.")
    if s["speed-up"] is not None:
        print(f"The single loop reached the unrolled baseline's final E[R] "
              f"({s['target (unrolled final E[R])']:.4f}, after {unrolled['time (s)']:.2f} s) "
              f"in {s['single loop time to reach (s)']:.3f} s ({s['single loop steps to reach']} "
              f"steps) and stayed above it: {s['speed-up']:.0f}x faster. (The ratio depends on the "
              f"budget; `samplegrad bench langevin` measures it over 400 unrolled steps.)")
    elif unrolled["gain in E[R]"] <= 0:
        print("The unrolled baseline ended at or below the start: no speed-up to report.")
    else:
        print("The single loop did not reach the unrolled baseline's final E[R] within the "
              "budget: no speed-up to report.")


def _print_spectral(s: dict[str, Any]) -> None:
    from samplegrad_bench._common import markdown_table

    st = s["settings"]
    print(f"\n3/3 Optimization-free diffusion: a spectral score model of the 8x8 digits in "
          f"{st['pcs']} whitened principal components ({st['n_train']} training images; "
          f"Hermite basis of degree {st['degree']}, {st['basis_size']} functions, one linear "
          f"solve per time on {st['n_times']} times, no optimizer), {st['n_samples']} samples "
          f"by {st['sample_steps']} reverse-SDE steps. Distances to the {st['n_test']} held-out "
          f"digits in the same coordinates (lower is better; the training digits give the "
          f"noise floor).\n")
    print(markdown_table(s["rows"]))


# ---- runner --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    import torch

    from samplegrad_bench._common import write_json
    from samplegrad_bench.runners import _demo_figure
    from samplegrad_bench.runners import _demo_parts as parts

    if not getattr(args, "threads", None):
        torch.set_num_threads(1)  # these problems are small: one thread is fastest
    cfg = _config(args)
    out = Path(args.out)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    cat = parts.categorical(cfg, args.seed)
    seconds["categorical"] = time.perf_counter() - t0
    _print_categorical(cat[0], args.seed)

    t0 = time.perf_counter()
    imp = parts.implicit(cfg, args.seed)
    seconds["implicit"] = time.perf_counter() - t0
    _print_implicit(imp[0])

    t0 = time.perf_counter()
    spec = parts.spectral_part(cfg, args.seed)
    seconds["spectral"] = time.perf_counter() - t0
    _print_spectral(spec[0])

    t0 = time.perf_counter()
    figure = _demo_figure.figure(cat, imp, spec, out / "demo.png")
    seconds["figure"] = time.perf_counter() - t0
    result = {"settings": {**asdict(cfg), "seed": args.seed, "quick": bool(args.quick),
                           "threads": torch.get_num_threads()},
              "categorical": cat[0], "implicit": imp[0], "spectral": spec[0],
              "seconds": seconds, "figure": figure.name}
    path = write_json(out / "demo.json", result)
    print(f"\nFigure: {figure}\nEvery number: {path}")
    return result
