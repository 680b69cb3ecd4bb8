"""Provenance of a benchmark run, and merging a run of some estimators into published results.

A runner records :func:`run_info` at its start and :func:`finish_info` at its end (date,
command line, load average). ``--merge-from DIR`` on a runner runs nothing: it merges the
estimators of a separate run of the same runner (its ``--out DIR``, made with ``--methods``)
into the results at the output location (``--publish``: the published ones). It is refused
unless the settings that the rows depend on are equal (:func:`check_same`); the rows of the
separate run's estimators replace any the base has, and the merged results carry a
``provenance`` list saying which estimators came from which run, when, and under what load.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from samplegrad_bench._args import MissingInputError, UsageError


class MergeError(UsageError):
    """The run cannot be merged into the base results (different settings)."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def run_info() -> dict[str, Any]:
    """Start of a run: UTC date, command line, CPU count, load average (1, 5, 15 min)."""
    return {"started": _now(), "argv": list(sys.argv[1:]), "cpus": os.cpu_count(),
            "load_start": _load()}


def finish_info(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with the end date and load average added (in place; returned)."""
    info["finished"] = _now()
    info["load_end"] = _load()
    return info


def add_merge_argument(p: Any) -> None:
    """The ``--merge-from DIR`` flag (same help for every runner)."""
    p.add_argument("--merge-from", type=Path, default=None, metavar="DIR",
                   help="run nothing: merge the estimators of a separate run of this "
                        "benchmark (its --out DIR, made with --methods and the same settings) "
                        "into the results at the output location (--publish: the published "
                        "ones), then rewrite their tables and plots; refused if the settings "
                        "differ; the JSON records which run each estimator came from")


_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _floats(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: _NON_FINITE[v] if isinstance(v, str) and v in _NON_FINITE else v
            for k, v in obj.items()}


def read_json(path: str | Path) -> dict[str, Any]:
    """The results object at ``path``; :class:`MissingInputError` if there is none."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"--merge-from: no results at {path}")
    try:  # write_json stores non-finite floats as strings: read them back as floats
        out = json.loads(path.read_text(), object_hook=_floats)
    except (OSError, ValueError) as e:
        raise MergeError(f"--merge-from: cannot read {path}: {e}") from None
    if not isinstance(out, dict):
        raise MergeError(f"--merge-from: {path} is not a results object")
    return out


def read_pair(out_dir: Path, run_dir: Path, name: str) -> tuple[dict, dict]:
    """(base, run): ``out_dir/name`` (the results merged into) and ``run_dir/name``."""
    if Path(out_dir).resolve() == Path(run_dir).resolve():
        raise MergeError("--merge-from: DIR is the output folder itself; pass the folder of "
                         "the separate run")
    return read_json(Path(out_dir) / name), read_json(Path(run_dir) / name)


def replace_rows(base: list[dict], new: list[dict], methods: Iterable[str],
                 key: str = "estimator") -> list[dict]:
    """``base`` without the rows of ``methods`` (by ``row[key]``), then ``new``."""
    methods = set(methods)
    return [r for r in base if r[key] not in methods] + list(new)


def check_same(base: dict[str, Any], new: dict[str, Any], what: str,
               only_new: Iterable[str] = ()) -> None:
    """Raise :class:`MergeError` unless the settings ``base`` and ``new`` agree on every key
    they share; keys in ``only_new`` (settings added since ``base`` was made, which only the
    new estimators read) may be missing from ``base``. Any other key in one only: refused."""
    only_new = set(only_new)
    diff = [f"{k}: {base.get(k, '(missing)')!r} in the base, {new.get(k, '(missing)')!r} in the run"
            for k in sorted(set(base) | set(new))
            if not (k in only_new and k not in base) and base.get(k, None) != new.get(k, None)]
    if diff:
        raise MergeError(f"--merge-from: the {what} of the base results and of the run differ, "
                         "so their rows are not comparable: " + "; ".join(diff))


def provenance(base: dict[str, Any], base_methods: Iterable[str], run: dict[str, Any],
               run_methods: Iterable[str], run_dir: str | Path,
               replaced: Iterable[str] | None = None, **scope: Any) -> list[dict[str, Any]]:
    """The ``provenance`` list of the merged results: ``base``'s own list (or one entry for
    the run that made it), minus the estimators whose every row the merged run replaces
    (``replaced``, default ``run_methods``), plus one entry for the merged run (its
    :func:`run_info`: dates, command line, load average; ``scope``: what it covered, e.g.
    ``problems=[...]``)."""
    run_methods = list(dict.fromkeys(run_methods))
    gone = set(run_methods if replaced is None else replaced)
    old = list(base.get("provenance") or [])
    if not old:
        old = [{"methods": list(dict.fromkeys(base_methods)), "source": "the base results' "
                "own run", **base.get("run_info", {})}]
    source = f"separate run in {run_dir} (--merge-from)"
    # a run merged again (e.g. once more of it had finished) replaces its earlier entry
    old = [{**p, "methods": [m for m in p["methods"] if m not in gone]} for p in old
           if p.get("source") != source]
    info = dict(run.get("run_info", {}))
    if info and "finished" not in info:
        info["note"] = "merged from an unfinished run: the estimators it had finished"
    return [p for p in old if p["methods"]] + [
        {"methods": run_methods, **scope, "source": source, "merged": _now(), **info}]
