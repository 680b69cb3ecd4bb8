"""Speed and autograd memory of the categorical estimators, eager and compiled, against
Gumbel-softmax and the PyPI peers.

Forward+backward of ``(estimator(logits) * w).sum()`` on float32 logits of each shape
(default ``(256, 30, 10)`` and ``(4096, 64, 32)``), for each thread count (default 1 and 2),
in eager mode and under ``torch.compile(fullgraph=True)`` (default backend inductor). In
each cell (shape, threads, mode) all estimators are timed interleaved in one process
(median over repeats) and reported as ratios to our ``gumbel_softmax(hard=True)`` in the same
mode; ``compiled / eager`` compares the two modes per estimator. PyTorch's
``F.gumbel_softmax`` and the PyPI peers ``redge`` 0.1.0 and ``reinmax`` 0.1.0
(``pip install -e '.[bench]'``) run beside them in eager mode, and the ReDGE speed-up over
the peer is given at the same knobs (``n_steps``, ``t1 = 0.5``). Autograd memory = bytes of
tensors saved for backward, against ``n_steps``. Eager runs use the default validation
(value checks on), as a user would; compiled code skips them.

Writes ``estimator_speed.json`` (``--quick``: ``estimator_speed_quick.json``, a smoke test on
a tiny shape with the ``aot_eager`` backend) into ``runs/speed/`` (``--publish``:
``docs/results/estimators/``) and prints one table per cell.

    samplegrad bench speed [--quick] [--shapes 256x30x10,4096x64x32] [--thread-counts 1,2]
                           [--modes eager,compiled] [--backend inductor] [--repeats N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import samplegrad as sg
from samplegrad_bench._args import comma_list, int_list, positive_int
from samplegrad_bench._common import markdown_table, saved_tensor_bytes, write_json

SHAPES = ((256, 30, 10), (4096, 64, 32))
QUICK_SHAPES = ((8, 3, 5),)
BASE = "gumbel_softmax(hard=True)"
MODES = ("eager", "compiled")
PEER_STEPS = (3, 5, 9)
Estimator = Callable[[torch.Tensor], torch.Tensor]


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 256x30x10, got {text!r}") from None
    if len(dims) < 1 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dims like 256x30x10, got {text!r}")
    return dims


def ours(quick: bool = False) -> dict[str, Estimator]:
    """Our estimators (eager and compiled); ``quick`` keeps the ratio's two ends and the
    newest pathwise ones (Gumbel-Rao, GST)."""
    c: dict[str, Estimator] = {
        BASE: lambda l: sg.gumbel_softmax(l, 0.5, hard=True),
        "redge n_steps=5": lambda l: sg.redge(l, 5, 0.5),
        "gumbel_rao n_rao=10": lambda l: sg.gumbel_rao(l, 0.5, 10),
        "gst": lambda l: sg.gst(l, 0.5),
    }
    if quick:
        return c
    c.update({
        "torch F.gumbel_softmax(hard=True)":
            lambda l: torch.nn.functional.gumbel_softmax(l, 0.5, hard=True),
        "gumbel_softmax(hard=False)": lambda l: sg.gumbel_softmax(l, 0.5),
        "straight_through": sg.straight_through,
        "reinmax": lambda l: sg.reinmax(l, 1.0),
        "redge n_steps=3": lambda l: sg.redge(l, 3, 0.5),
        "redge n_steps=9": lambda l: sg.redge(l, 9, 0.5),
        "redge n_steps=5 exact": lambda l: sg.redge(l, 5, 0.5, exact=True),
        "redge_cov n_steps=5": lambda l: sg.redge(l, 5, 0.5, variant="cov"),
        "redge_max n_steps=5": lambda l: sg.redge(l, 5, 0.5, variant="max"),
    })
    return c


def peers() -> dict[str, Estimator]:
    """The PyPI peers (eager only), when the ``[bench]`` extra installed them."""
    c: dict[str, Estimator] = {}
    try:
        import redge as peer
        from redge.reindge import ddim_mod

        for n in PEER_STEPS:
            c[f"peer redge 0.1.0 n_steps={n}"] = lambda l, n=n: peer.redge(l, n, 0.5)
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


def _loss_fn(fn: Estimator) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(logits: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (fn(logits) * w).sum()

    return loss


def _step(loss, logits, w) -> float:
    t = time.perf_counter()
    loss(logits, w).backward()
    logits.grad = None
    return time.perf_counter() - t


def _time_cell(losses: dict, logits, w, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per fwd+bwd, all candidates interleaved (machine noise hits all)."""
    for _ in range(warmup):
        for loss in losses.values():
            _step(loss, logits, w)
    times: dict[str, list[float]] = {k: [] for k in losses}
    for _ in range(repeats):
        for name, loss in losses.items():
            times[name].append(_step(loss, logits, w))
    return {k: statistics.median(v) for k, v in times.items()}


def _compile_all(cands: dict[str, Estimator], backend: str, logits, w) -> tuple[dict, dict]:
    """``torch.compile(fullgraph=True)`` every candidate; returns (losses, compile seconds).
    A candidate that fails to compile is reported and left out (never silently eager)."""
    torch._dynamo.reset()  # compiled kernels are specialized to the thread count
    # every candidate compiles the same `loss` code object: without this, Dynamo stops
    # compiling after its default 8 recompiles and the later candidates would not compile
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               4 * len(cands))
    out, secs = {}, {}
    for name, fn in cands.items():
        compiled = torch.compile(_loss_fn(fn), fullgraph=True, backend=backend)
        t = time.perf_counter()
        try:
            _step(compiled, logits, w)
        except Exception as e:  # noqa: BLE001 - report any compiler failure, keep going
            print(f"  compile failed for {name}: {type(e).__name__}: {str(e)[:200]}")
            continue
        secs[name] = time.perf_counter() - t
        out[name] = compiled
    return out, secs


def memory_rows(fn_of_steps: dict[str, Callable[[torch.Tensor, int], torch.Tensor]],
                steps: list[int], shape: tuple[int, ...]) -> list[dict]:
    logits = torch.randn(shape, requires_grad=True)
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
                   help="timed repeats per estimator and cell (default 300 on shapes up to "
                        "10^6 elements, else 15; quick 3)")
    p.add_argument("--shapes", type=comma_list(_shape), default=None,
                   help="logits shapes, e.g. 256x30x10,4096x64x32 (the default; quick 8x3x5)")
    p.add_argument("--thread-counts", type=int_list, default=None,
                   help="torch intra-op thread counts, each measured in this process "
                        "(default 1,2; quick 1; --threads N means just N)")
    p.add_argument("--modes", type=comma_list(choices=MODES), default=list(MODES),
                   help="eager and/or compiled (default both)")
    p.add_argument("--backend", default=None,
                   help="torch.compile backend (default inductor; quick aot_eager)")


def _cell_rows(med: dict[str, dict[str, float]], mem: dict[str, float]) -> list[dict]:
    rows = []
    names = list(dict.fromkeys(n for m in med.values() for n in m))
    for name in names:
        row: dict = {"estimator": name}
        for mode, m in med.items():
            if name in m:
                row[f"{mode} (us)"] = round(m[name] * 1e6)
                if BASE in m:
                    row[f"{mode} vs gumbel_hard"] = round(m[name] / m[BASE], 2)
        if "eager" in med and "compiled" in med and name in med["compiled"] \
                and name in med["eager"]:
            row["compiled / eager"] = round(med["compiled"][name] / med["eager"][name], 2)
        if name in mem:
            row["autograd memory (KiB)"] = mem[name]
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    shapes = [tuple(s) for s in (args.shapes or (QUICK_SHAPES if quick else SHAPES))]
    threads_list = ([args.threads] if args.threads else
                    args.thread_counts or ([1] if quick else [1, 2]))
    backend = args.backend or ("aot_eager" if quick else "inductor")
    modes = list(args.modes)
    mine, others = ours(quick), peers()
    cells, flat, summary = [], [], []
    for shape in shapes:
        numel = 1
        for d in shape:
            numel *= d
        repeats = args.repeats or (3 if quick else 300 if numel <= 10**6 else 15)
        warmup = 3 if quick else 5 if numel <= 10**6 else 2
        torch.manual_seed(args.seed)
        logits = torch.randn(shape, requires_grad=True)
        w = torch.randn(shape)
        mem = {}
        for name, fn in {**mine, **others}.items():
            with saved_tensor_bytes() as m:
                y = fn(logits)
            (y * w).sum().backward()
            logits.grad = None
            mem[name] = round(m["bytes"] / 1024, 1)
        for threads in threads_list:
            torch.set_num_threads(threads)
            med: dict[str, dict[str, float]] = {}
            compile_secs: dict[str, float] = {}
            if "eager" in modes:
                losses = {k: _loss_fn(f) for k, f in {**mine, **others}.items()}
                med["eager"] = _time_cell(losses, logits, w, repeats, warmup=warmup)
            if "compiled" in modes:
                compiled, compile_secs = _compile_all(mine, backend, logits, w)
                med["compiled"] = _time_cell(compiled, logits, w, repeats,
                                             warmup=min(warmup, 2 if quick else 5))
            rows = _cell_rows(med, mem)
            speedup = {}
            for mode, m in med.items():
                for n in PEER_STEPS:
                    peer_key, our_key = f"peer redge 0.1.0 n_steps={n}", f"redge n_steps={n}"
                    if peer_key in med.get("eager", {}) and our_key in m:
                        speedup[f"{mode} n_steps={n}"] = round(med["eager"][peer_key]
                                                               / m[our_key], 2)
            cell = {"shape": list(shape), "threads": threads, "repeats": repeats,
                    "backend": backend if "compiled" in modes else None, "rows": rows,
                    "speedup_vs_peer_redge": speedup,
                    "compile_seconds": {k: round(v, 1) for k, v in compile_secs.items()}}
            cells.append(cell)
            flat += [{"shape": "x".join(map(str, shape)), "threads": threads, **r} for r in rows]
            target = {mode: round(m["redge n_steps=5"] / m[BASE], 2) for mode, m in med.items()
                      if "redge n_steps=5" in m and BASE in m}
            slower = sorted(r["estimator"] for r in rows if r.get("compiled / eager", 0) > 1.0)
            summary.append({"shape": "x".join(map(str, shape)), "threads": threads,
                            **{f"redge5 / gumbel_hard ({k})": v for k, v in target.items()},
                            **{f"vs peer redge ({k})": v for k, v in speedup.items()
                               if k.endswith("n_steps=5")},
                            "compiled slower than eager": ", ".join(slower) or "none"})
            print(f"\nForward+backward on logits {shape}, float32, {threads} thread(s), "
                  f"median of {repeats} interleaved repeats"
                  + (f"; compiled with backend {backend!r}" if "compiled" in modes else "")
                  + "\n")
            print(markdown_table(rows))
            if speedup:
                print("\nours vs peer redge 0.1.0 (speed-up, same n_steps, t1=0.5, peer eager): "
                      + ", ".join(f"{k}: {v}x" for k, v in speedup.items()))
    print("\nSummary (target: redge n_steps=5 <= 1.5x hard Gumbel-softmax; compiled never "
          "slower than eager; >= 2x faster than peer redge)\n")
    print(markdown_table(summary))
    steps = [3, 5, 9] if quick else [3, 5, 9, 17, 33]
    mem_fns: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
        "samplegrad redge": lambda l, n: sg.redge(l, n, 0.5),
        "samplegrad redge exact": lambda l, n: sg.redge(l, n, 0.5, exact=True),
        "samplegrad redge_max": lambda l, n: sg.redge(l, n, 0.5, variant="max"),
    }
    try:
        import redge as peer

        mem_fns["peer redge 0.1.0"] = lambda l, n: peer.redge(l, n, 0.5)
    except ImportError:
        pass
    mrows = memory_rows(mem_fns, steps, shapes[0])
    print(f"\nAutograd memory (bytes saved for backward) against n_steps, logits {shapes[0]}\n")
    print(markdown_table(mrows))
    result = {"shapes": [list(s) for s in shapes], "thread_counts": threads_list,
              "modes": modes, "backend": backend, "validation_in_eager": True,
              "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(),
              "cells": cells, "rows": flat, "summary": summary, "memory_vs_n_steps": mrows}
    name = "estimator_speed_quick.json" if quick else "estimator_speed.json"
    path = write_json(args.out / name, result)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":  # same as `samplegrad bench speed ...`
    import sys

    from samplegrad_bench.cli import main

    raise SystemExit(main(["bench", "speed", *sys.argv[1:]]))
