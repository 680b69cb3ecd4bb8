"""Every script in examples/ runs with ``--quick`` and writes only under ``--out``.

Each example runs as a subprocess (one thread, ``SAMPLEGRAD_HOME`` and the working
directory in a temporary folder). It must exit 0, print its summary and a last line naming
the output folder, leave files in that folder, and create nothing in the working directory
nor any file that git would see in the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT_S = 300  # --quick aims at seconds; this only stops a hung run
# what each example's summary must contain (every one ends with "outputs in <out>/ ...")
SUMMARY = {
    "categorical_vae": ["test -ELBO", "redge", "rloo"],
    "langevin_reward": ["reward before", "reward after", "theta found"],
    "finetune_custom_model": ["reward before", "reward after", "implicit", "unrolled"],
    "spectral_user_data": ["energy", "sliced W2", "spectral", "gaussian"],
    "guide_masked_diffusion": ["unguided", "guided redge", "guided rloo", "valid"],
    "distributed_vae": ["distributed VAE", "max_abs_diff_vs_single_process=0"],
}
# examples whose last line is a result; "outputs in" is then the line before it
LAST_LINE = {"distributed_vae": "max_abs_diff_vs_single_process="}
_SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
              ".hypothesis"}


def _repo_files() -> set[str]:
    """The files git would see in the repository: tracked or untracked but not ignored
    (``runs/`` and caches are ignored). Without git: every file but caches and the venv."""
    try:
        res = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        res = None
    if res is not None and res.returncode == 0:
        return {f for f in res.stdout.split("\0") if f and (ROOT / f).exists()}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames)
    return found


def test_the_five_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= set(SUMMARY)


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_quick(script: Path, tmp_path: Path) -> None:
    out, home, cwd = tmp_path / "out", tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {**os.environ, "SAMPLEGRAD_HOME": str(home), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    before = _repo_files()
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)],
                          cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    log = f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}\n{log}"
    lines = proc.stdout.strip().splitlines()
    if script.stem in LAST_LINE and lines and lines[-1].startswith(LAST_LINE[script.stem]):
        lines = lines[:-1]
    assert lines and lines[-1].startswith("outputs in") and str(out) in lines[-1], \
        f"{script.name}: the last line must say where the outputs are\n{log}"
    for text in SUMMARY.get(script.stem, []):
        assert text in proc.stdout, f"{script.name}: summary lacks {text!r}\n{log}"
    assert out.is_dir() and any(out.iterdir()), f"{script.name}: nothing written in --out"
    assert not any(cwd.iterdir()), \
        f"{script.name} wrote into the working directory: {sorted(os.listdir(cwd))}"
    new = sorted(_repo_files() - before)
    assert not new, f"{script.name} created files in the repository: {new}"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_has_docstring_and_options(script: Path) -> None:
    source = script.read_text(encoding="utf-8")
    assert source.startswith('"""'), f"{script.name}: start with a docstring saying what it shows"
    for option in ("--quick", "--out", "argparse", 'if __name__ == "__main__":'):
        assert option in source, f"{script.name}: lacks {option}"
