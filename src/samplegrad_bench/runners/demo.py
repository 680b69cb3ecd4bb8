"""`samplegrad demo`: a small gradient-estimator showdown, in a few minutes on a laptop CPU.

Two tables over every estimator (ours and, when installed, the peer PyPI ``redge``), each at
its default knobs, on problems defined in code (no downloads):

1. Polynomial programming (:mod:`samplegrad_bench.tasks.polyprog`): Adam on free logits of ``L``
   binary variables; the exact expected loss reached, its gap to the optimum, the wall time.
2. Gradient quality (:mod:`samplegrad_bench.tasks.gradient_problems`): bias², variance, MSE and
   cosine to the exact gradient of a small random MLP objective (enumerated), from many
   independent single estimates, and the cost of one estimate.

The full versions are ``samplegrad bench polyprog`` and ``samplegrad bench gradients``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from samplegrad_bench._args import int_at_least, positive_float, positive_int
from samplegrad_bench._common import markdown_table, progress, seed_all, write_json
from samplegrad_bench.estimators import bench_methods, default_knobs
from samplegrad_bench.runners import gradients, polyprog
from samplegrad_bench.tasks import polyprog as task
from samplegrad_bench.tasks.gradient_problems import get_problem

GRAD_PROBLEM = "mlp_L4_K5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=None,
                   help="Adam steps (default 300; quick 60)")
    p.add_argument("--power", type=positive_float, default=2.0, help="loss power p (default 2)")
    p.add_argument("--draws", type=int_at_least(2), default=None,
                   help="gradient draws per estimator (default 2000; quick 200)")


def _knobs(name: str) -> dict[str, Any]:
    """Default knobs; REINFORCE gets an EMA-of-past-losses baseline (decay 0.9) when training."""
    kn = default_knobs(name)
    if name == "reinforce":
        kn.pop("baseline", None)
        kn["ema"] = 0.9
    return kn


def polyprog_table(names: list[str], n_vars: int, steps: int, batch: int, power: float,
                   seed: int) -> list[dict[str, Any]]:
    """Each estimator optimizes the same polynomial program; rows sorted by final E[loss]."""
    rows = []
    bar = progress(names, desc="demo: polynomial program", total=len(names), disable=None)
    for name in bar:
        bar.set_postfix_str(name)
        r = polyprog.optimize(name, _knobs(name), power, seed, n_vars=n_vars, batch=batch,
                              steps=steps)
        rows.append({"estimator": name, "knobs": polyprog.knob_str(r["knobs"]),
                     "final E[loss]": r["final"], "gap to optimum": r["gap"],
                     "time (s)": r["seconds"]})
    return sorted(rows, key=lambda r: r["final E[loss]"])


def gradient_table(names: list[str], n_draws: int, seed: int) -> list[dict[str, Any]]:
    """Bias², variance, MSE, cosine of one estimate (RLOO: 2 samples) at default knobs."""
    problem = get_problem(GRAD_PROBLEM, seed=seed)
    value, truth = problem.exact()
    rows = []
    bar = progress(names, desc="demo: gradient quality", total=len(names), disable=None)
    for name in bar:
        bar.set_postfix_str(name)
        knobs = default_knobs(name)
        if name == "reinforce":
            knobs["baseline"] = None
        n = 2 if name == "rloo" else 1
        seed_all(seed)
        est = gradients.draw_estimates(problem.f, problem.logits, name, n_draws, n, **knobs)
        s = gradients.gradient_stats(est, truth)
        sec = gradients.time_estimate(problem.f, problem.logits, name, n, reps=10, **knobs)
        rows.append({"estimator": name, "knobs": gradients.knob_str(knobs), "n": n,
                     "bias²": s["bias2"], "variance": s["variance"], "MSE": s["mse"],
                     "cosine": s["cosine"], "µs/estimate": sec * 1e6})
    return sorted(rows, key=lambda r: r["MSE"])


def run(args: argparse.Namespace) -> dict:
    if not getattr(args, "threads", None):
        torch.set_num_threads(1)
    steps = args.steps or (60 if args.quick else 300)
    n_draws = args.draws or (200 if args.quick else 2000)
    n_vars, batch = 64, 32
    names = bench_methods()

    rows = polyprog_table(names, n_vars, steps, batch, args.power, args.seed)
    print(f"\n1. Polynomial programming: L={n_vars} binary variables, loss mean_d |x_d - 0.45|^"
          f"{args.power:g}, Adam lr 0.05 from zero logits, {batch} samples/step, {steps} steps, "
          f"seed {args.seed}, default knobs (REINFORCE: EMA baseline)")
    start = float(task.expected_loss(torch.zeros(n_vars, 2), args.power))
    print(f"(start: E[loss] = {start:.4f}, optimum {task.optimum(args.power):.4f}; "
          f"final E[loss] is exact, from the final logits)\n")
    print(markdown_table(rows))
    pp = {"settings": {"n_vars": n_vars, "batch": batch, "steps": steps, "power": args.power,
                       "seed": args.seed}, "rows": rows}
    write_json(args.out / "polyprog_demo.json", pp)

    grows = gradient_table(names, n_draws, args.seed)
    problem = get_problem(GRAD_PROBLEM, seed=args.seed)
    g2 = float((problem.exact()[1] ** 2).sum())
    print(f"\n2. Gradient quality against the exact gradient: {problem.description}, "
          f"‖g‖² = {g2:.4g}; {n_draws} independent single estimates per estimator (RLOO: 2 "
          f"samples), default knobs; µs = fastest fwd+bwd of 10, 1 thread\n")
    print(markdown_table(grows))
    gq = {"settings": {"problem": problem.name, "n_draws": n_draws, "seed": args.seed,
                       "grad_norm2": g2}, "rows": grows}
    write_json(args.out / "gradients_demo.json", gq)
    return {"polyprog": pp, "gradients": gq}
