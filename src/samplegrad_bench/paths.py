"""Where the harness reads and writes: run outputs, published results, caches.

- Run outputs: ``runs/NAME/`` under the current directory (gitignored in a checkout), or the
  folder given by ``--out``.
- Published results (``--publish``): ``docs/results/NAME/`` of the samplegrad checkout this
  package is imported from; the documentation embeds those files.
- Caches (digit classifier, MALA chains, Sudoku puzzles, trained checkpoints, resumable runs):
  :func:`cache_dir`, i.e. ``$SAMPLEGRAD_HOME`` if set, else the user cache folder of
  ``platformdirs`` (e.g. ``~/.cache/samplegrad`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_HOME", "NotACheckoutError", "cache_dir", "output_dir", "publish_dir",
           "results_root", "run_dir"]

ENV_HOME = "SAMPLEGRAD_HOME"
RUNS = Path("runs")
# src/samplegrad_bench/paths.py -> the repository root, when imported from a checkout
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


class NotACheckoutError(RuntimeError):
    """``--publish`` asked for, but this package is not imported from a samplegrad checkout."""


def cache_dir(sub: str = "") -> Path:
    """The cache folder (``sub`` inside it when given); not created here.

    ``$SAMPLEGRAD_HOME`` when set (tests point it at a temporary folder), else
    ``platformdirs.user_cache_dir("samplegrad")``.
    """
    root = os.environ.get(ENV_HOME)
    if root:
        base = Path(root).expanduser()
    else:
        try:
            from platformdirs import user_cache_dir
        except ImportError as e:  # the [bench] extra is not installed
            raise ModuleNotFoundError(
                f"platformdirs is missing: pip install 'samplegrad[bench]', or set "
                f"{ENV_HOME} to a cache folder") from e
        base = Path(user_cache_dir("samplegrad"))
    return base / sub if sub else base


def run_dir(name: str) -> Path:
    """Default output folder of ``samplegrad ... NAME``: ``runs/NAME`` (relative to the cwd)."""
    return RUNS / name


def results_root(source_root: Path | None = None) -> Path:
    """``docs/results`` of the checkout holding this package (``source_root``: the repository
    root to use instead); raises :class:`NotACheckoutError` outside a checkout."""
    root = Path(source_root) if source_root is not None else _SOURCE_ROOT
    results = root / "docs" / "results"
    if not (root / "pyproject.toml").is_file() or not results.is_dir():
        raise NotACheckoutError(
            f"--publish writes into docs/results/ of a samplegrad checkout, but samplegrad_bench "
            f"is imported from {Path(__file__).resolve().parent}, which is not inside one (no "
            f"{results}); run it from a clone installed with `pip install -e .`, or use --out DIR")
    return results


def publish_dir(name: str, source_root: Path | None = None) -> Path:
    """Published-results folder of ``name``: ``<checkout>/docs/results/NAME``."""
    return results_root(source_root) / name


def output_dir(name: str, out: str | Path | None = None, publish: bool = False,
               publish_name: str | None = None) -> Path:
    """Output folder of one command: ``out`` if given, ``docs/results/PUBLISH_NAME`` with
    ``publish`` (``publish_name`` defaults to ``name``), else ``runs/NAME``."""
    if publish and out is not None:
        raise ValueError("out: give either an output folder or publish, not both")
    if publish:
        return publish_dir(publish_name or name)
    return Path(out) if out is not None else run_dir(name)
