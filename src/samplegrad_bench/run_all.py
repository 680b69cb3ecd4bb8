"""Run every `samplegrad bench NAME` runner in turn (full settings, or --quick).

    python benchmarks/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from samplegrad_bench.cli import BENCHES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=list(BENCHES), choices=list(BENCHES))
    args = ap.parse_args()
    failed = []
    for name in args.only:
        cmd = [sys.executable, "-m", "samplegrad_bench.cli", "bench", name]
        if args.quick:
            cmd.append("--quick")
        print(f"\n=== {' '.join(cmd[2:])} ===", flush=True)
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
