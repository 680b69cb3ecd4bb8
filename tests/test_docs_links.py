"""The docs and the docstrings agree: every ``docs/...md#anchor`` named in the source exists,
no docstring points to the old ``METHODS.md``, and the site builds in strict mode."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOCS = ROOT / "docs"
REF = re.compile(r"docs/([\w./-]+?\.md)(?:#([\w-]+))?")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")
EXPLICIT_ID = re.compile(r"\{[^}]*#([\w-]+)[^}]*\}\s*$")


def _slug(text: str) -> str:
    """Python-Markdown's default ``toc`` slug of a heading."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """Heading ids of a Markdown page: explicit ``{#id}`` attributes, else the default slug
    (headings inside fenced code blocks are skipped)."""
    out: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m is None:
            continue
        explicit = EXPLICIT_ID.search(m.group(1))
        out.add(explicit.group(1) if explicit else _slug(m.group(1)))
    return out


def source_files() -> list[Path]:
    """The library, the harness and the example scripts."""
    return sorted([*SRC.rglob("*.py"), *(ROOT / "examples").glob("*.py")])


def doc_references() -> list[tuple[str, int, str, str | None]]:
    """``(file, line, page, anchor)`` for every ``docs/PAGE.md[#anchor]`` in the sources."""
    refs = []
    for path in source_files():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in REF.finditer(line):
                refs.append((str(path.relative_to(ROOT)), i, m.group(1), m.group(2)))
    return refs


def test_methods_page_has_unique_explicit_anchors():
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    ids = EXPLICIT_ID.findall("\n".join(ln for ln in text.splitlines() if ln.startswith("#")))
    assert ids, "docs/methods.md: headings should carry explicit {#id} anchors"
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"docs/methods.md: duplicate anchors {dupes}"


def test_docstring_references_resolve():
    refs = doc_references()
    assert any(page == "methods.md" for _, _, page, _ in refs), \
        "no docstring points to docs/methods.md any more"
    broken = []
    cache: dict[str, set[str]] = {}
    for file, line, page, anchor in refs:
        target = DOCS / page
        if not target.is_file():
            broken.append(f"{file}:{line}: docs/{page} does not exist")
            continue
        if anchor is not None:
            ids = cache.setdefault(page, anchors(target))
            if anchor not in ids:
                broken.append(f"{file}:{line}: docs/{page} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_no_reference_to_the_old_methods_file():
    stale = [f"{p.relative_to(ROOT)}:{i}"
             for p in source_files()
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if "METHODS.md" in line]
    assert not stale, "METHODS.md moved to docs/methods.md; update: " + ", ".join(stale)


def test_anchor_parser():
    assert _slug("The queue") == "the-queue"
    assert _slug("ReDGE: a categorical variable") == "redge-a-categorical-variable"
    assert EXPLICIT_ID.search("The queue {#queue}").group(1) == "queue"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings") is None,
                    reason="the [docs] extra (mkdocs, mkdocstrings) is not installed")
def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` (a few seconds): broken links, anchors, nav entries and
    docstring warnings fail it. ``make docs`` runs the same build into runs/site."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "site" / "methods" / "index.html").is_file()
