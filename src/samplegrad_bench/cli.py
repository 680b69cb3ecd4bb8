"""The ``samplegrad`` command line: ``samplegrad demo``, ``samplegrad bench NAME``, tools."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

# name -> module under samplegrad_bench.runners; each defines add_arguments(parser) and run(args).
BENCHES: dict[str, str] = {
    "gradients": "samplegrad_bench.runners.gradients",
    "polyprog": "samplegrad_bench.runners.polyprog",
    "sudoku": "samplegrad_bench.runners.sudoku",
    "vae": "samplegrad_bench.runners.vae",
    "langevin": "samplegrad_bench.runners.langevin",
    "finetune": "samplegrad_bench.runners.finetune",
    "spectral": "samplegrad_bench.runners.spectral",
    "guidance": "samplegrad_bench.runners.guidance",
}

# other commands: name -> (module, help). Same contract as a bench.
TOOLS: dict[str, tuple[str, str]] = {
    "demo": ("samplegrad_bench.runners.demo", "the main job on embedded data, in a few minutes"),
    "train-ddpm": ("samplegrad_bench.runners.train_ddpm",
                   "train the small DDPM on 8x8 digits (weights file for `bench finetune`)"),
    "train-mdm": ("samplegrad_bench.runners.train_mdm",
                  "train the masked discrete diffusion models (checkpoints for `bench guidance`)"),
}


def _common(p: argparse.ArgumentParser, default_out: str = "results") -> None:
    p.add_argument("--quick", action="store_true", help="small settings (minutes)")
    p.add_argument("--out", type=Path, default=Path(default_out), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:  # a runner not written yet
        if e.name == module:
            raise SystemExit(f"samplegrad: {module} is not available in this build") from e
        raise


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samplegrad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark: " + ", ".join(BENCHES))
    bsub = bench.add_subparsers(dest="name", required=True)
    wanted = argv[1] if len(argv) > 1 and argv[0] == "bench" else None
    for name, module in BENCHES.items():
        p = bsub.add_parser(name)
        _common(p)
        if name == wanted:  # import only the runner that is asked for
            mod = _load(module)
            if hasattr(mod, "add_arguments"):
                mod.add_arguments(p)
        p.set_defaults(module=module)
    for name, (module, help_) in TOOLS.items():
        p = sub.add_parser(name, help=help_)
        _common(p)
        if argv and argv[0] == name:
            mod = _load(module)
            if hasattr(mod, "add_arguments"):
                mod.add_arguments(p)
        p.set_defaults(module=module)
    sub.add_parser("list", help="list benchmarks and estimators")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser(argv).parse_args(argv)
    if args.command == "list":
        from samplegrad import methods

        print("benchmarks:", ", ".join(BENCHES))
        print("estimators:", ", ".join(methods()))
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        _load(args.module).run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: partial results and checkpoints written so far are kept",
              file=sys.stderr)
        return 130
    print(f"[samplegrad {args.command} {getattr(args, 'name', '') or ''}] done in "
          f"{time.perf_counter() - start:.1f}s; outputs in {args.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
