"""`samplegrad demo`: every estimator on a small polynomial program, as a table.

Minimize E[mean_d |x_d - 0.45|^p] over L independent binary variables x_d ~ Bern(sigmoid)
with Adam on free logits (the optimum sets every x_d = 0, loss 0.45^p). Each estimator gets
the same budget; the table reports the exact expected loss reached (no sampling noise in
the score), its gap to the optimum and the wall time.
"""

from __future__ import annotations

import argparse

import torch

import samplegrad as sg
from samplegrad.experiments._common import Timer, markdown_table, progress, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default 300; quick 60)")
    p.add_argument("--power", type=float, default=2.0)


def expected_loss(logits: torch.Tensor, power: float) -> float:
    """Exact E[mean_d |x_d - 0.45|^p] for logits ``(L, 2)`` (class 1 means x_d = 1)."""
    p1 = torch.softmax(logits, -1)[:, 1]
    return float((p1 * 0.55**power + (1 - p1) * 0.45**power).mean())


def run_one(method: str, n_vars: int, steps: int, batch: int, power: float, seed: int) -> dict:
    torch.manual_seed(seed)
    logits = torch.zeros(n_vars, 2, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)

    def f(x: torch.Tensor) -> torch.Tensor:  # (S, L, 2) -> (S,)
        return ((x[..., 1] - 0.45).abs() ** power).mean(-1)

    with Timer() as t:
        for _ in range(steps):
            opt.zero_grad()
            sg.surrogate(f, logits, method=method, n_samples=batch).backward()
            opt.step()
    final = expected_loss(logits.detach(), power)
    return {"estimator": method, "final E[loss]": final, "gap to optimum": final - 0.45**power,
            "time (s)": t.seconds}


def run(args: argparse.Namespace) -> dict:
    steps = args.steps or (60 if args.quick else 300)
    n_vars, batch = 64, 32
    names = [m for m in sg.methods() if m != "exact"]
    rows = []
    bar = progress(names, desc="demo: estimators", total=len(names), disable=None)
    for name in bar:
        bar.set_postfix_str(name)
        rows.append(run_one(name, n_vars, steps, batch, args.power, args.seed))
    rows.sort(key=lambda r: r["final E[loss]"])
    print(f"\nPolynomial programming: L={n_vars} binary variables, loss mean_d |x_d - 0.45|^"
          f"{args.power:g}, Adam lr 0.05, {batch} samples/step, {steps} steps, logits start at 0")
    print(f"(start: E[loss] = {expected_loss(torch.zeros(n_vars, 2), args.power):.4f}, "
          f"optimum {0.45 ** args.power:.4f})\n")
    print(markdown_table(rows))
    out = {"settings": {"n_vars": n_vars, "batch": batch, "steps": steps, "power": args.power,
                        "seed": args.seed}, "rows": rows}
    write_json(args.out / "demo" / "polyprog_demo.json", out)
    return out
