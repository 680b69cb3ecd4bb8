"""Total variation between ReDGE's hard-sample frequencies and softmax(logits).

K=6 classes, 200k draws per cell (noise floor printed), default sampler against
``exact=True``, over n_steps x t1, and the PyPI peer ``redge`` 0.1.0 when installed.
Writes results/sampling_exactness.json.

    python benchmarks/sampling_exactness.py [--quick]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import samplegrad as sg
from samplegrad_bench._common import markdown_table, write_json


def tv(onehots: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((onehots.reshape(-1, probs.numel()).mean(0) - probs).abs().sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    n = 20_000 if args.quick else 200_000
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
    print(f"\nwrote {write_json(args.out / 'sampling_exactness.json', res)}")
    return res


if __name__ == "__main__":
    main()
