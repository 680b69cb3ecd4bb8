"""Total variation between ReDGE's hard-sample frequencies and softmax(logits).

K=6 classes, 200k draws per cell (noise floor printed), default sampler against
``exact=True``, over n_steps x t1, and the PyPI peer ``redge`` 0.1.0 when installed.
Writes ``sampling_exactness.json`` (``--quick``: ``sampling_exactness_quick.json``) into
``runs/exactness/`` (``--publish``: ``docs/results/estimators/``).

    samplegrad bench exactness [--quick] [--draws N]
"""

from __future__ import annotations

import argparse
import math

import torch

import samplegrad as sg
from samplegrad_bench._args import int_at_least
from samplegrad_bench._common import markdown_table, write_json


def tv(onehots: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((onehots.reshape(-1, probs.numel()).mean(0) - probs).abs().sum())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draws", type=int_at_least(2), default=None,
                   help="hard samples per cell (default 200000; quick 20000)")


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    n = args.draws or (20_000 if args.quick else 200_000)
    logits = torch.tensor([1.5, -1.0, 0.3, -0.2, 0.9, -2.0])
    probs = torch.softmax(logits, -1)
    # E|TV| of an exact sampler ~ 0.5 * sum_k sqrt(2 p_k (1 - p_k) / (pi n))
    floor = 0.5 * float((2 * probs * (1 - probs) / (math.pi * n)).sqrt().sum())
    try:
        import redge as peer
    except ImportError:
        peer = None
    rows = []
    for t1 in (0.1, 0.3, 0.6):
        for n_steps in (2, 3, 5, 9):
            x = logits.expand(n, 6)
            row = {"t1": t1, "n_steps": n_steps,
                   "TV default": tv(sg.redge(x, n_steps, t1), probs),
                   "TV exact=True": tv(sg.redge(x, n_steps, t1, exact=True), probs)}
            if peer is not None:
                row["TV peer redge 0.1.0"] = tv(peer.redge(x, n_steps, t1).detach(), probs)
            rows.append(row)
    print(f"\nTotal variation to softmax(logits), K=6, {n} draws per cell "
          f"(an exact sampler's expected TV: {floor:.4f})\n")
    print(markdown_table(rows))
    res = {"n_draws": n, "logits": logits, "noise_floor": floor, "rows": rows}
    name = "sampling_exactness_quick.json" if args.quick else "sampling_exactness.json"
    print(f"\nwrote {write_json(args.out / name, res)}")
    return res


if __name__ == "__main__":  # same as `samplegrad bench exactness ...`
    import sys

    from samplegrad_bench.cli import main

    raise SystemExit(main(["bench", "exactness", *sys.argv[1:]]))
