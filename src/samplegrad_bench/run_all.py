"""Run every `samplegrad bench NAME` in turn (full settings, or --quick), each in its own process.

    python -m samplegrad_bench.run_all [--quick | --publish] [--only NAME,NAME]

Outputs go where `samplegrad bench NAME` puts them: ``runs/NAME/`` (``--publish``: the
checkout's ``docs/results/``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from samplegrad_bench._args import comma_list, positive_int
from samplegrad_bench.cli import BENCHES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small settings")
    mode.add_argument("--publish", action="store_true",
                      help="write into docs/results/ (full settings only)")
    ap.add_argument("--only", type=comma_list(choices=BENCHES), default=list(BENCHES),
                    metavar="NAME,...", help="benchmarks to run (default: all)")
    ap.add_argument("--threads", type=positive_int, default=None, help="passed to every bench")
    args = ap.parse_args(argv)
    failed = []
    for name in args.only:
        cmd = [sys.executable, "-m", "samplegrad_bench.cli", "bench", name]
        cmd += ["--quick"] * args.quick + ["--publish"] * args.publish
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"\n=== samplegrad {' '.join(cmd[3:])} ===", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc} after {time.perf_counter() - start:.0f}s ===", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
