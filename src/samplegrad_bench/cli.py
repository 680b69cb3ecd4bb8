"""The ``samplegrad`` command: ``samplegrad demo``, ``samplegrad bench NAME``, training tools.

Every command writes into ``runs/NAME/`` under the current directory, or ``--out DIR``;
``--publish`` writes into the checkout's ``docs/results/NAME/`` (the results the
documentation embeds). Caches and trained checkpoints live in
:func:`samplegrad_bench.paths.cache_dir` (``$SAMPLEGRAD_HOME`` or the user cache folder).
Lists are comma-separated everywhere (``--methods redge,rloo``, ``--seeds 0,1,2``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from samplegrad_bench import paths
from samplegrad_bench._args import MissingInputError, UsageError, nonneg_int, positive_int

# name -> (module under samplegrad_bench.runners, one-line description). Each module defines
# add_arguments(parser) and run(args).
BENCHES: dict[str, tuple[str, str]] = {
    "gradients": ("samplegrad_bench.runners.gradients",
                  "bias, variance and MSE of every estimator against exact gradients"),
    "polyprog": ("samplegrad_bench.runners.polyprog",
                 "polynomial programming: Adam on binary variables with every estimator"),
    "sudoku": ("samplegrad_bench.runners.sudoku",
               "Sudoku without a prior: solve rate of every estimator at step budgets"),
    "vae": ("samplegrad_bench.runners.vae",
            "categorical VAEs on digits / Fashion-MNIST trained with every estimator"),
    "langevin": ("samplegrad_bench.runners.langevin",
                 "implicit reward training of a Langevin sampler against unrolled baselines"),
    "langevin-speed": ("samplegrad_bench.runners.langevin_speed",
                       "ms per theta step of the Langevin single loop, eager and compiled"),
    "finetune": ("samplegrad_bench.runners.finetune",
                 "Implicit Diffusion finetuning of the digit DDPM against the unrolled sampler"),
    "spectral": ("samplegrad_bench.runners.spectral",
                 "optimization-free spectral score models against neural score matching"),
    "spectral-tilt": ("samplegrad_bench.runners.spectral_tilt",
                      "reward tilting of spectral score models (one solve) vs Implicit Diffusion"),
    "spectral-scale": ("samplegrad_bench.runners.spectral_scale",
                       "spectral score models at scale: matrix-free CG fits up to 784 pixels"),
    "guidance": ("samplegrad_bench.runners.guidance",
                 "reward guidance of masked discrete diffusion (Sudoku, digits) per estimator"),
    "speed": ("samplegrad_bench.runners.speed",
              "forward+backward time and autograd memory of the estimators and peers"),
    "exactness": ("samplegrad_bench.runners.exactness",
                  "total variation of ReDGE's hard samples to softmax(logits)"),
    "distributed": ("samplegrad_bench.runners.distributed",
                    "data-parallel throughput of the training loops on 1 vs 2 processes"),
    "mdm-finetune": ("samplegrad_bench.runners.mdm_finetune",
                     "reward finetuning of the digits masked diffusion model through its sampler"),
    "finetune-images": ("samplegrad_bench.runners.finetune_images",
                        "reward finetuning of a Fashion-MNIST DDPM: implicit vs unrolled, DRaFT, "
                        "DDPO"),
}

# other commands: name -> (module, one-line description). Same contract as a bench.
TOOLS: dict[str, tuple[str, str]] = {
    "demo": ("samplegrad_bench.runners.demo",
             "a tour of the three systems on embedded data: tables and one figure (~1 min)"),
    "train-ddpm": ("samplegrad_bench.runners.train_ddpm",
                   "train the small DDPM on 8x8 digits (the weights `bench finetune` loads) or "
                   "on Fashion-MNIST (--dataset fashion)"),
    "train-mdm": ("samplegrad_bench.runners.train_mdm",
                  "train the masked discrete diffusion models (checkpoints for `bench guidance`)"),
}

# where --publish writes, when not docs/results/NAME
PUBLISH_AS: dict[str, str] = {"speed": "estimators", "exactness": "estimators",
                              "langevin-speed": "langevin",
                              "train-ddpm": "finetune", "train-mdm": "guidance"}

# the [bench] extra's packages that every runner may need
BENCH_PACKAGES: tuple[str, ...] = ("numpy", "matplotlib", "sklearn", "platformdirs")


class _Version(argparse.Action):
    """``--version``: imports the library only when asked (it imports torch)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the samplegrad version and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import samplegrad

        print(f"samplegrad {samplegrad.__version__}")
        parser.exit()


def _common(p: argparse.ArgumentParser, name: str) -> None:
    """Flags every runner takes; ``--seed`` unless the runner takes ``--seeds`` itself."""
    p.add_argument("--quick", action="store_true", help="small settings (seconds to minutes)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help=f"output folder (default: runs/{name} under the current folder)")
    where.add_argument("--publish", action="store_true",
                       help="write into the checkout's docs/results/"
                            f"{PUBLISH_AS.get(name, name)}/ (the results the docs embed); "
                            "not with --quick")
    if "--seeds" not in p._option_string_actions:
        p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads (default: the runner's, mostly 1)")


def _load(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:  # a runner not written yet
        if e.name == module:
            raise SystemExit(f"samplegrad: {module} is not available in this build") from e
        raise


def _add_runner(sub, name: str, module: str, help_: str, wanted: bool) -> None:
    p = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
    if wanted:  # import only the runner that is asked for
        mod = _load(module)
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
    _common(p, name)
    p.set_defaults(module=module, runner=name)


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samplegrad", allow_abbrev=False,
        description="samplegrad's command line: a demo, the benchmarks, training tools.",
        epilog="Outputs go to runs/NAME/ under the current folder (--out DIR elsewhere; "
               "--publish: the checkout's docs/results/NAME/). Caches and trained checkpoints: "
               "$SAMPLEGRAD_HOME, else the user cache folder. Lists are comma-separated: "
               "--methods redge,rloo, --seeds 0,1,2.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    words = [a for a in argv if not a.startswith("-")]
    for name, (module, help_) in TOOLS.items():
        _add_runner(sub, name, module, help_, wanted=words[:1] == [name])
    bench = sub.add_parser("bench", help="run a benchmark: " + ", ".join(BENCHES),
                           description="Run one benchmark (`samplegrad bench NAME --help`).")
    bsub = bench.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (module, help_) in BENCHES.items():
        _add_runner(bsub, name, module, help_, wanted=words[:2] == ["bench", name])
    sub.add_parser("list", help="list benchmarks and estimators",
                   description="List the benchmarks and the registered estimators.")
    return parser


def _missing_packages() -> list[str]:
    return [m for m in BENCH_PACKAGES if importlib.util.find_spec(m) is None]


def output_dir(args: argparse.Namespace) -> Path:
    """Where the runner of ``args`` writes (see :func:`samplegrad_bench.paths.output_dir`)."""
    name = args.runner
    return paths.output_dir(name, args.out, args.publish, PUBLISH_AS.get(name, name))


def _fresh_command(argv: list[str]) -> str:
    """The command line of ``argv`` with ``--fresh`` (the way to start a damaged run over)."""
    import shlex

    words = [a for a in argv if a != "--fresh"]
    return shlex.join(["samplegrad", *words, "--fresh"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] and (words[0] in TOOLS or words[0] == "bench" and len(words) > 1):
        missing = _missing_packages()
        if missing:
            print(f"samplegrad: {' '.join(words[:2])} needs the [bench] extra (missing: "
                  f"{', '.join(missing)}); pip install 'samplegrad[bench]'", file=sys.stderr)
            return 1
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    if args.command == "list":
        from samplegrad import methods

        print("benchmarks:", ", ".join(BENCHES))
        print("estimators:", ", ".join(methods()))
        return 0
    label = f"samplegrad {args.command}{' ' + args.name if args.command == 'bench' else ''}"

    def usage_error(message: str) -> NoReturn:  # like argparse: one line, exit status 2
        parser.exit(2, f"{label}: error: {message}\n")

    if args.publish and args.quick:
        usage_error("--publish: quick runs are never published (drop --quick or --publish)")
    try:
        args.out = output_dir(args)
    except paths.NotACheckoutError as e:
        usage_error(str(e))
    import torch

    from samplegrad.checkpoint import CheckpointError

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
    except UsageError as e:
        usage_error(str(e))
    except MissingInputError as e:
        print(f"{label}: {e}", file=sys.stderr)
        return 1
    except CheckpointError as e:  # damaged checkpoints with no good previous one
        advice = (f"recreate them with {e.hint}" if e.hint else
                  f"start over with `{_fresh_command(argv)}`" if hasattr(args, "fresh") else
                  "delete these files to start over")
        print(f"{label}: {e.detail}; {advice}", file=sys.stderr)
        return 1
    print(f"[{label}] done in {time.perf_counter() - start:.1f}s; outputs in {args.out}/",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
