"""Speed and autograd memory of the categorical estimators, against Gumbel-softmax and peers.

Forward+backward of ``(estimator(logits) * w).sum()`` on a ``(256, 30, 10)`` logits tensor,
all estimators interleaved in one process (median over repeats), as ratios to our
``gumbel_softmax(hard=True)``; PyTorch's ``F.gumbel_softmax`` and the PyPI peers ``redge``
0.1.0 and ``reinmax`` 0.1.0 (``pip install -e '.[bench]'``) run beside them.
Autograd memory = bytes of tensors saved for backward. Writes ``estimator_speed.json``
(``--quick``: ``estimator_speed_quick.json``) into ``runs/speed/`` (``--publish``:
``docs/results/estimators/``).

    samplegrad bench speed [--quick] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import samplegrad as sg
from samplegrad_bench._args import positive_int
from samplegrad_bench._common import markdown_table, saved_tensor_bytes, write_json

SHAPE = (256, 30, 10)


def candidates() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    c: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "gumbel_softmax(hard=True)": lambda l: sg.gumbel_softmax(l, 0.5, hard=True),
        "torch F.gumbel_softmax(hard=True)":
            lambda l: torch.nn.functional.gumbel_softmax(l, 0.5, hard=True),
        "straight_through": sg.straight_through,
        "reinmax": lambda l: sg.reinmax(l, 1.0),
        "redge n_steps=3": lambda l: sg.redge(l, 3, 0.5),
        "redge n_steps=5": lambda l: sg.redge(l, 5, 0.5),
        "redge n_steps=9": lambda l: sg.redge(l, 9, 0.5),
        "redge n_steps=5 exact": lambda l: sg.redge(l, 5, 0.5, exact=True),
        "redge_cov n_steps=5": lambda l: sg.redge(l, 5, 0.5, variant="cov"),
        "redge_max n_steps=5": lambda l: sg.redge(l, 5, 0.5, variant="max"),
    }
    try:
        import redge as peer
        from redge.reindge import ddim_mod

        c["peer redge 0.1.0 n_steps=3"] = lambda l: peer.redge(l, 3, 0.5)
        c["peer redge 0.1.0 n_steps=5"] = lambda l: peer.redge(l, 5, 0.5)
        c["peer redge 0.1.0 n_steps=9"] = lambda l: peer.redge(l, 9, 0.5)
        c["peer redge_cov n_steps=5"] = lambda l: peer.redge_cov(l, 5, 0.5)
        c["peer reindge n_steps=5"] = lambda l: peer.reindge(l, ddim_mod, 5, 0.5)
    except ImportError:
        print("peer package `redge` not installed: pip install -e '.[bench]'")
    try:
        import reinmax as reinmax_pkg

        c["peer reinmax 0.1.0"] = lambda l: reinmax_pkg.reinmax(l, 1.0)[0]
    except ImportError:
        print("peer package `reinmax` not installed: pip install -e '.[bench]'")
    return c


def _step(fn, logits, w) -> float:
    t = time.perf_counter()
    (fn(logits) * w).sum().backward()
    logits.grad = None
    return time.perf_counter() - t


def memory_rows(fn_of_steps: dict[str, Callable[[torch.Tensor, int], torch.Tensor]],
                steps: list[int]) -> list[dict]:
    logits = torch.randn(SHAPE, requires_grad=True)
    rows = []
    for name, fn in fn_of_steps.items():
        row: dict = {"estimator": name}
        for n in steps:
            with saved_tensor_bytes() as m:
                y = fn(logits, n)
            y.sum().backward()
            logits.grad = None
            row[f"n_steps={n} (KiB)"] = round(m["bytes"] / 1024, 1)
        rows.append(row)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed repeats per estimator (default 300; quick 40)")


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or 1)
    threads = torch.get_num_threads()
    torch.manual_seed(args.seed)
    logits = torch.randn(SHAPE, requires_grad=True)
    w = torch.randn(SHAPE)
    cands = candidates()
    repeats = args.repeats or (40 if args.quick else 300)
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(5):  # warm-up
        for fn in cands.values():
            _step(fn, logits, w)
    for _ in range(repeats):  # interleaved, so machine noise hits every row alike
        for name, fn in cands.items():
            times[name].append(_step(fn, logits, w))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["gumbel_softmax(hard=True)"]
    torch_base = med["torch F.gumbel_softmax(hard=True)"]
    rows = []
    for name in cands:
        with saved_tensor_bytes() as m:
            y = cands[name](logits)
        (y * w).sum().backward()
        logits.grad = None
        rows.append({"estimator": name, "fwd+bwd (us)": round(med[name] * 1e6),
                     "vs our gumbel_softmax": round(med[name] / base, 2),
                     "vs torch gumbel_softmax": round(med[name] / torch_base, 2),
                     "autograd memory (KiB)": round(m["bytes"] / 1024, 1)})
    print(f"\nForward+backward on logits {SHAPE}, float32, {threads} thread(s), "
          f"median of {repeats} interleaved repeats\n")
    print(markdown_table(rows))
    speedups = {}
    for n in (3, 5, 9):
        peer_key = f"peer redge 0.1.0 n_steps={n}"
        if peer_key in med:
            speedups[n] = round(med[peer_key] / med[f"redge n_steps={n}"], 2)
    if speedups:
        print("\nours vs peer redge 0.1.0 (speed-up, same n_steps, t1=0.5):",
              ", ".join(f"n_steps={k}: {v}x" for k, v in speedups.items()))
    steps = [3, 5, 9, 17, 33]
    mem_fns: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
        "samplegrad redge": lambda l, n: sg.redge(l, n, 0.5),
        "samplegrad redge exact": lambda l, n: sg.redge(l, n, 0.5, exact=True),
    }
    try:
        import redge as peer

        mem_fns["peer redge 0.1.0"] = lambda l, n: peer.redge(l, n, 0.5)
    except ImportError:
        pass
    mrows = memory_rows(mem_fns, steps)
    print("\nAutograd memory (bytes saved for backward) against n_steps\n")
    print(markdown_table(mrows))
    result = {"shape": SHAPE, "threads": threads, "repeats": repeats,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "rows": rows, "speedup_vs_peer_redge": speedups, "memory_vs_n_steps": mrows}
    name = "estimator_speed_quick.json" if args.quick else "estimator_speed.json"
    path = write_json(args.out / name, result)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":  # same as `samplegrad bench speed ...`
    import sys

    from samplegrad_bench.cli import main

    raise SystemExit(main(["bench", "speed", *sys.argv[1:]]))
