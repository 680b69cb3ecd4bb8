"""Shared helpers for benchmark runners: tables, JSON, seeding, figures.

Progress bars and measurement come from the library (re-exported here for the runners).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from samplegrad._progress import progress
from samplegrad.profiling import Timer, peak_rss_mb, saved_tensor_bytes

__all__ = ["Timer", "markdown_table", "peak_rss_mb", "progress", "read_results",
           "save_figure", "saved_tensor_bytes", "seed_all", "write_json"]


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` (dicts, lists, dataclasses, tensors, numpy scalars) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    tmp.replace(path)  # atomic: an interrupt never leaves half a file
    return path


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 10**6):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   digits: int = 4) -> str:
    """Rows of dicts as a GitHub-markdown table (the format the README embeds)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, ""), digits) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def seed_all(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a fresh generator with the same seed."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110, tight: bool = True) -> Path:
    """Lay out (``tight``), write and close a matplotlib figure; creates the folder."""
    import matplotlib.pyplot as plt

    path = Path(path)
    if tight:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def read_results(path: str | Path, key: str, kind: type) -> dict[str, Any]:
    """A results JSON to resume from, which must hold ``key`` of type ``kind``; a damaged
    one is a :class:`samplegrad.checkpoint.CheckpointError` (the command line adds the
    ``--fresh`` hint)."""
    from samplegrad.checkpoint import CheckpointError

    path = Path(path)
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict) or not isinstance(old.get(key), kind):
            raise ValueError(f"no {key!r} entry")
        return old
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, [(path, f"unreadable results ({e})")]) from None
