"""The documentation runs: every ```python block of README.md and docs/**/*.md is executed.

One test per Markdown file. Its Python blocks run in order in one namespace (fresh per
file), so a later block may use what an earlier one defined, exactly as a reader pasting
them one after the other would. Each file runs with the working directory and
``SAMPLEGRAD_HOME`` in a temporary folder (a block that writes files cannot touch the
repository) and with torch seeded. A failure names the file and the line where the failing
block starts, and the traceback points at the block's own lines in the Markdown file.
``bash``/``text``/``console`` (any non-Python) blocks are ignored.
"""

from __future__ import annotations

import random
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
PYTHON_INFO = {"python", "py", "python3", "pycon"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced Python block: ``line`` is the 1-based line of its opening fence."""

    line: int
    code: str


def _dedent(line: str, indent: str) -> str:
    return line[len(indent):] if line.startswith(indent) else line.lstrip(" \t")


def python_blocks(text: str) -> list[Block]:
    """The fenced Python blocks of a Markdown ``text``, in order.

    A fence is 3+ backticks or tildes (indentation allowed, e.g. inside admonitions); it
    closes on a line of the same character, at least as long, with no info string, so a
    ```python example quoted inside a longer fence is not run. The language is the first
    word of the info string (``python title="x.py"`` and ``{.python}`` count).
    """
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        words = m["info"].strip().lstrip("{").lstrip(".").split()
        lang = words[0].lower().rstrip("}") if words else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if (close is not None and close["fence"][0] == fence[0]
                    and len(close["fence"]) >= len(fence) and not close["info"].strip()):
                break
            body.append(_dedent(lines[j], indent))
            j += 1
        if lang in PYTHON_INFO:
            blocks.append(Block(i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def markdown_files() -> list[Path]:
    """README.md and every Markdown file under docs/ (recursively), sorted."""
    files = [ROOT / "README.md"] if (ROOT / "README.md").exists() else []
    docs = ROOT / "docs"
    if docs.is_dir():
        files += sorted(docs.rglob("*.md"))
    return files


def _traceback(exc: BaseException) -> str:
    """The traceback from the block's own frames on (this test's ``exec`` frame dropped)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_block_parser() -> None:
    text = "\n".join([
        "# t", "```python", "a = 1", "```", "```bash", "echo no", "```",
        "````markdown", "```python", "raise SystemExit", "```", "````",
        "!!! note", "    ```py title=\"x.py\"", "    b = a + 1", "    ```", "~~~text", "x",
        "~~~",
    ])
    blocks = python_blocks(text)
    assert [(b.line, b.code) for b in blocks] == [(2, "a = 1\n"), (14, "b = a + 1\n")]


@pytest.mark.parametrize("path", markdown_files(), ids=_rel)
def test_markdown_python_blocks_run(path: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{_rel(path)} has no python blocks")
    home = tmp_path / "samplegrad_home"
    home.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.setenv("SAMPLEGRAD_HOME", str(home))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(work)
    torch.manual_seed(0)
    random.seed(0)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    namespace: dict = {"__name__": "__main__"}
    failure = ""
    try:
        for block in blocks:
            # pad so that compiled line numbers are the Markdown file's own line numbers
            source = "\n" * block.line + block.code
            try:
                exec(compile(source, str(path), "exec"), namespace)
            except (Exception, SystemExit) as exc:
                failure = (f"{_rel(path)}: the python block starting at line {block.line} "
                           f"raised {type(exc).__name__}: {exc}\n{_traceback(exc)}")
                break
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            pass
        else:
            plt.close("all")
    if failure:
        pytest.fail(failure, pytrace=False)


def test_readme_at_most_300_lines() -> None:
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the limit is {README_MAX_LINES}"
