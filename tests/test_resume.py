"""Kill-and-resume of every resumable command: an interrupted-and-resumed run writes exactly
the files an uninterrupted one writes.

Each command runs three times with tiny settings through ``samplegrad_bench.cli.main``, each
in its own folder (relative paths, so paths inside the outputs agree): once straight through
(folder ``a``), then interrupted and resumed (folder ``b``). The interrupt is a real SIGINT
raised from inside the k-th call of the command's step function (the commands with a
``DeferredInterrupt`` finish the step, save and stop; the others stop at once, as Ctrl-C
does), or a crash in the middle of a step (nothing saved at the interrupt, like ``kill -9``),
or a SIGKILL of a subprocess. Then every file of both folders is compared: JSON numbers and
checkpoint contents exactly, PNG files byte for byte, markdown tables cell by cell -- except
the wall-clock fields named in ``TIMING`` (they differ between any two runs; ``run_info``
holds the run's dates and load average).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from samplegrad.checkpoint import CheckpointWarning, previous_path
from samplegrad_bench import cli
from samplegrad_bench.runners import finetune as finetune_runner
from samplegrad_bench.runners import polyprog as polyprog_runner
from samplegrad_bench.runners import sudoku as sudoku_runner
from samplegrad_bench.runners import train_ddpm as ddpm_runner
from samplegrad_bench.runners import train_mdm as mdm_runner
from samplegrad_bench.tasks import vae as vae_task

# measurements that differ between any two runs (JSON keys, checkpoint entries, markdown
# columns, whole files): wall-clock times, and finetune's autograd byte counts, which
# de-duplicate tensors by storage address, so they depend on the allocator's reuse of memory
TIMING = {
    "train-ddpm": {"seconds"},
    "train-mdm": {"seconds_this_run"},
    "vae": {"train_seconds", "ms_per_step", "eval_seconds", "ms/step", "run_info"},
    "polyprog": {"seconds", "s/run", "run_info"},
    "sudoku": {"seconds", "times", "run_info"},
    "finetune": {"init_s", "step_ms", "step_ms_median", "total_s", "advance_ms", "adjoint_ms",
                 "ms/θ step", "advance ms (T·N rows)", "adjoint ms", "implicit ms/θ step",
                 "ratio step/(advance+adjoint)", "unrolled ms/θ step",
                 "graph_kib", "activation_kib", "activations KiB",
                 "activations unrolled/implicit",
                 "scaling_quick.png"},  # (it plots the time and activation bytes per step)
}


# ---------------------------------------------------------------- helpers
def _strip(obj, ignore):
    if isinstance(obj, dict):
        return {k: _strip(v, ignore) for k, v in obj.items() if k not in ignore}
    if isinstance(obj, (list, tuple)):
        return [_strip(v, ignore) for v in obj]
    return obj


def _same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def _md(text, ignore):
    """Markdown lines with the cells of the ignored table columns blanked."""
    out, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            out.append(line)
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        keep = [c for h, c in zip(header, cells) if h not in ignore]
        out.append(keep)
    return out


def assert_same_files(a: Path, b: Path, ignore: set[str]) -> list[str]:
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        pa, pb = a / rel, b / rel
        if Path(rel).name in ignore:
            continue
        if rel.endswith(".json"):
            _same(_strip(json.loads(pa.read_text()), ignore),
                  _strip(json.loads(pb.read_text()), ignore), rel)
        elif rel.endswith(".md"):
            assert _md(pa.read_text(), ignore) == _md(pb.read_text(), ignore), rel
        elif rel.endswith((".pt", ".ckpt", ".prev")):
            _same(_strip(torch.load(pa, weights_only=False), ignore),
                  _strip(torch.load(pb, weights_only=False), ignore), rel)
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel
    return files_a


def interrupt_on_call(mp, module, name: str, k: int, how: str = "sigint") -> dict:
    """Replace ``module.name`` by a wrapper that, on its ``k``-th call, raises SIGINT (then
    runs the call: a deferred interrupt lets the step finish) or crashes mid-step."""
    orig = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kw):
        calls["n"] += 1
        if calls["n"] == k:
            if how == "sigint":
                signal.raise_signal(signal.SIGINT)
            else:  # a crash inside the step: nothing is saved at this point
                raise KeyboardInterrupt
        return orig(*args, **kw)

    mp.setattr(module, name, wrapper)
    return calls


@pytest.fixture
def two_dirs(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()

    def run(where: Path, argv: list[str]) -> int:
        monkeypatch.chdir(where)
        return cli.main(argv)

    return a, b, run


def kill_and_resume(two_dirs, monkeypatch, argv, module, name, k, ignore, how="sigint"):
    a, b, run = two_dirs
    assert run(a, argv) == 0
    with monkeypatch.context() as mp:
        calls = interrupt_on_call(mp, module, name, k, how)
        assert run(b, argv) == 130  # interrupted: the CLI's exit status for Ctrl-C
    assert calls["n"] == k
    assert run(b, argv) == 0
    return assert_same_files(a, b, ignore)


# ---------------------------------------------------------------- the commands
DDPM = ["train-ddpm", "--quick", "--steps", "210", "--ckpt-every", "50", "--checkpoint",
        "ddpm.pt", "--threads", "1"]


@pytest.mark.parametrize("how", ["sigint", "crash"])
def test_train_ddpm_kill_and_resume(two_dirs, monkeypatch, how):
    # k = 121: past two checkpoints and the loss logged at step 100, whose smoothed value
    # must survive the interrupt (it was lost before: 7 of 10 logged losses differed)
    files = kill_and_resume(two_dirs, monkeypatch, DDPM, ddpm_runner, "ddpm_loss", 121,
                            TIMING["train-ddpm"], how)
    assert files == ["ddpm.pt", "runs/train-ddpm/train_ddpm_quick.json"]  # checkpoints gone


def test_train_ddpm_survives_damaged_checkpoints_and_fresh_starts_over(two_dirs, monkeypatch,
                                                                       capsys):
    a, b, run = two_dirs
    assert run(a, DDPM) == 0
    with monkeypatch.context() as mp:
        interrupt_on_call(mp, ddpm_runner, "ddpm_loss", 121)
        assert run(b, DDPM) == 130
    ckpt = b / "ddpm.pt.ckpt"
    assert ckpt.exists() and previous_path(ckpt).exists()  # steps 121 and 100
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])  # a half-written file (disk full, bad copy)
    with pytest.warns(CheckpointWarning, match=r"ddpm\.pt\.ckpt is unusable: truncated"):
        assert run(b, DDPM) == 0  # resumes from step 100: same files all the same
    assert_same_files(a, b, TIMING["train-ddpm"])

    # both checkpoints damaged: one clear line naming the files and the command to start over
    with monkeypatch.context() as mp:
        interrupt_on_call(mp, ddpm_runner, "ddpm_loss", 121)
        assert run(b, DDPM) == 130
    ckpt.write_bytes(b"")
    previous_path(ckpt).write_bytes(os.urandom(4096))
    capsys.readouterr()
    assert run(b, DDPM) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "ddpm.pt.ckpt: empty file" in err and "ddpm.pt.ckpt.prev: truncated or not a " \
        "checkpoint" in err
    assert err.endswith("start over with `samplegrad " + " ".join(DDPM) + " --fresh`")
    assert run(b, [*DDPM, "--fresh"]) == 0
    assert_same_files(a, b, TIMING["train-ddpm"])


def test_train_ddpm_sigkill_of_a_subprocess_then_resume(two_dirs, monkeypatch, tmp_path):
    a, b, run = two_dirs
    argv = [*DDPM[:3], "400", *DDPM[4:]]  # long enough to be killed mid-run
    assert run(a, argv) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "samplegrad_bench.cli", *argv], cwd=b,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = b / "ddpm.pt.ckpt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and ckpt.exists()
    assert run(b, argv) == 0
    assert_same_files(a, b, TIMING["train-ddpm"])


def test_train_mdm_kill_and_resume(two_dirs, monkeypatch):
    argv = ["train-mdm", "--quick", "--task", "digits", "--steps", "12", "--ckpt-every", "4",
            "--checkpoint", "mdm", "--out", "out", "--threads", "1"]
    files = kill_and_resume(two_dirs, monkeypatch, argv, mdm_runner, "train_step", 7,
                            TIMING["train-mdm"])
    assert "mdm/digits/last.pt" in files and "out/train_mdm_digits_quick.json" in files


def test_bench_vae_kill_and_resume(two_dirs, monkeypatch):
    argv = ["bench", "vae", "--quick", "--methods", "redge,reinforce", "--steps", "24",
            "--seeds", "0", "--iwae-samples", "8", "--test-subset", "16", "--checkpoints",
            "ck", "--out", "out", "--threads", "1"]
    # call 37 = reinforce's step 13: its EMA baseline must come back too
    files = kill_and_resume(two_dirs, monkeypatch, argv, vae_task, "train_step", 37,
                            TIMING["vae"])
    assert {"out/digits_20x10_quick.json", "out/digits_20x10_quick.md",
            "out/digits_20x10_quick.png"} <= set(files)


def test_bench_polyprog_kill_and_resume(two_dirs, monkeypatch):
    argv = ["bench", "polyprog", "--quick", "--steps", "6", "--sweep-steps", "3", "--n-vars",
            "8", "--batch", "8", "--seeds", "0,1", "--powers", "2,3", "--sweep-power", "2",
            "--methods", "redge,reinforce", "--cache", "cache", "--out", "out"]
    files = kill_and_resume(two_dirs, monkeypatch, argv, polyprog_runner, "optimize", 9,
                            TIMING["polyprog"])
    assert {"out/polyprog_quick.json", "out/polyprog_quick.png"} <= set(files)


def test_bench_sudoku_kill_and_resume(two_dirs, monkeypatch):
    argv = ["bench", "sudoku", "--quick", "--n-puzzles", "1", "--budgets", "2,4", "--methods",
            "redge,reinforce,rloo", "--out", "out", "--threads", "1"]
    # call 7 = reinforce's 3rd step: redge is done and kept, reinforce is redone from scratch
    files = kill_and_resume(two_dirs, monkeypatch, argv, sudoku_runner, "step", 7,
                            TIMING["sudoku"])
    assert files == ["out/sudoku_quick.json", "out/sudoku_quick_solved.png"]


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory):
    weights = tmp_path_factory.mktemp("ddpm") / "tiny.pt"
    cfg = dataclasses.replace(ddpm_runner.QUICK, steps=10)
    ddpm_runner.train_ddpm(cfg, weights, verbose=False)
    return weights


def test_bench_finetune_kill_and_resume(two_dirs, monkeypatch, tiny_ddpm):
    argv = ["bench", "finetune", "--quick", "--checkpoint", str(tiny_ddpm), "--theta-steps",
            "2", "--n-steps", "3", "--pop-size", "4", "--no-rss", "--out", "out",
            "--threads", "1"]
    # call 3 = the digit reward's implicit run: the brightness grid of the resumed run needs
    # the cached samples of the two runs finished before the interrupt
    files = kill_and_resume(two_dirs, monkeypatch, argv, finetune_runner, "run_method", 3,
                            TIMING["finetune"])
    assert {"out/finetune_quick.json", "out/samples_brightness_T3_quick.png",
            "out/samples_digit_T10_quick.png"} <= set(files)


def test_results_json_damage_is_named_with_the_fresh_command(two_dirs, capsys):
    a, _, run = two_dirs
    argv = ["bench", "sudoku", "--quick", "--n-puzzles", "1", "--budgets", "2", "--methods",
            "redge", "--out", "out", "--threads", "1"]
    assert run(a, argv) == 0
    path = a / "out" / "sudoku_quick.json"
    path.write_text(path.read_text()[:50])
    capsys.readouterr()
    assert run(a, argv) == 1
    err = capsys.readouterr().err
    assert "sudoku_quick.json: unreadable results" in err and "--fresh`" in err
    assert run(a, [*argv, "--fresh"]) == 0
    json.loads(path.read_text())


def test_every_resumable_command_documents_fresh(capsys):
    for argv in (["train-ddpm"], ["train-mdm"], ["bench", "vae"], ["bench", "polyprog"],
                 ["bench", "sudoku"], ["bench", "finetune"]):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--fresh start over" in out, argv


def test_damaged_caches_are_recomputed(tmp_path):
    from samplegrad_bench.tasks.sudoku import puzzle_set

    p1, s1 = puzzle_set(2, seed=3, cache_dir=tmp_path)
    (f,) = tmp_path.iterdir()
    f.write_bytes(f.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p2, s2 = puzzle_set(2, seed=3, cache_dir=tmp_path)
    assert any("recomputing it" in str(w.message) for w in rec)
    assert torch.equal(p1, p2) and torch.equal(s1, s2)


def test_a_damaged_model_checkpoint_names_the_command_that_recreates_it(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    train = ["train-mdm", "--quick", "--task", "digits", "--steps", "4", "--checkpoint", "mdm",
             "--out", "res", "--threads", "1"]
    assert cli.main(train) == 0
    guide = ["bench", "guidance", "--quick", "--checkpoint", "mdm", "--tasks", "digits",
             "--methods", "unguided", "--n-digits", "2", "--out", "res", "--threads", "1"]
    (tmp_path / "mdm" / "digits" / "final.pt").write_bytes(b"\0" * 64)
    capsys.readouterr()
    assert cli.main(guide) == 1
    err = capsys.readouterr().err
    assert "final.pt: truncated or not a checkpoint" in err and "final.pt.prev: missing" in err
    assert err.strip().endswith("recreate them with `samplegrad train-mdm --task digits "
                                "--checkpoint mdm --fresh`")
    assert cli.main([*train, "--fresh"]) == 0
    assert cli.main(guide) == 0
