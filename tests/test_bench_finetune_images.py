"""`train-ddpm --dataset fashion` (quick, kill and resume) and `bench finetune-images --quick`
on fake Fashion-MNIST files (CI has no Fashion-MNIST)."""

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from samplegrad_bench import cli
from samplegrad_bench.data import write_idx
from samplegrad_bench.runners import finetune_images as fi
from samplegrad_bench.runners import train_ddpm as ddpm_runner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion"
    folder.mkdir()
    for stem, n in (("train", 48), ("t10k", 24)):
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    monkeypatch.setenv("SAMPLEGRAD_FASHION_MNIST", str(folder))
    monkeypatch.setenv("SAMPLEGRAD_HOME", str(tmp_path / "home"))
    return tmp_path


def _run(monkeypatch, where: Path, argv: list[str]) -> int:
    where.mkdir(exist_ok=True)
    monkeypatch.chdir(where)
    return cli.main(argv)


TRAIN = ["train-ddpm", "--dataset", "fashion", "--quick", "--steps", "6", "--ckpt-every", "2",
         "--checkpoint", "ddpm.pt", "--threads", "1"]


def test_digits_defaults_are_unchanged():
    assert ddpm_runner.default_weights().name == "ddpm_digits.pt"
    assert ddpm_runner.default_weights(True).name == "ddpm_digits_quick.pt"
    assert ddpm_runner.default_weights(False, "fashion").name == "ddpm_fashion.pt"
    with pytest.raises(ValueError, match="dataset"):
        ddpm_runner.default_weights(False, "cifar")


def test_train_ddpm_fashion_quick_kill_and_resume(fake_env, monkeypatch):
    a, b = fake_env / "a", fake_env / "b"
    assert _run(monkeypatch, a, TRAIN) == 0
    calls = {"n": 0}
    orig = ddpm_runner.ddpm_loss

    def interrupting(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            signal.raise_signal(signal.SIGINT)  # deferred: step 4 finishes, is saved, stops
        return orig(*args, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(ddpm_runner, "ddpm_loss", interrupting)
        assert _run(monkeypatch, b, TRAIN) == 130
    assert (b / "ddpm.pt.ckpt").exists() and not (b / "ddpm.pt").exists()
    assert _run(monkeypatch, b, TRAIN) == 0
    assert not (b / "ddpm.pt.ckpt").exists()  # removed once the weights are written
    wa = torch.load(a / "ddpm.pt", weights_only=False)
    wb = torch.load(b / "ddpm.pt", weights_only=False)
    assert wa["config"] == wb["config"] and wa["config"]["dataset"] == "fashion"
    assert all(torch.equal(v, wb["state_dict"][k]) for k, v in wa["state_dict"].items())
    out = Path("runs/train-ddpm")
    ja = json.loads((a / out / "train_ddpm_fashion_quick.json").read_text())
    jb = json.loads((b / out / "train_ddpm_fashion_quick.json").read_text())
    ja.pop("seconds"), jb.pop("seconds")
    ja.pop("weights"), jb.pop("weights")
    assert ja == jb
    png = "train_ddpm_fashion_quick.png"
    assert (a / out / png).read_bytes() == (b / out / png).read_bytes()
    model, alpha_bars, cfg = ddpm_runner.load_ddpm(a / "ddpm.pt")
    assert isinstance(cfg, ddpm_runner.FashionDDPMConfig) and cfg.mults == (1, 2)
    assert model(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1])).shape == (2, 1, 28, 28)
    assert len(alpha_bars) == cfg.n_train


def _tracked_changes() -> set[str]:
    try:
        got = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available")
    if got.returncode != 0:
        pytest.skip("not a git checkout")
    # only this bench's names: other work in the same checkout may change other files
    words = ("finetune-images", "finetune_images", "fashion", ".pt")
    return {line for line in got.stdout.splitlines() if any(w in line for w in words)}


def test_bench_quick_writes_json_and_plots_and_nothing_in_the_checkout(fake_env, monkeypatch):
    before = _tracked_changes()
    argv = ["bench", "finetune-images", "--quick", "--methods", "implicit,unrolled,draft-1,ddpo",
            "--threads", "1"]
    assert _run(monkeypatch, fake_env / "w", argv) == 0
    out = fake_env / "w" / "runs" / "finetune-images"
    got = json.loads((out / "finetune_images_quick.json").read_text())
    rows = got["rows"]
    # brightness, classifier: 4 methods; threshold: ddpo only; lambda sweep: 4 methods
    assert len(rows) == 4 + 4 + 1 + 4
    assert {r["method"] for r in rows if r["reward_name"] == "threshold"} == {"ddpo"}
    for r in rows:
        assert r["T"] == 3 and len(r["trace"]) == 2
        assert r["step_ms"] > 0 and r["peak_autograd_mib"] >= 0 and np.isfinite(r["fd"])
    unrolled = [r for r in rows if r["method"] == "unrolled" and r["reward_name"] != "threshold"]
    assert all(r["peak_autograd_mib"] > 0 for r in unrolled)
    names = {p.name for p in out.iterdir()}
    assert {"finetune_images_quick.md", "scaling_quick.png"} <= names
    for prefix in ("reward_kl_classifier_T3_lr", "curves_classifier_T3_steps2_lr",
                   "curves_threshold_T3_steps2_lr", "samples_classifier_T3_lam0.01_steps2_lr",
                   "samples_classifier_T3_lam0.1_steps2_lr"):
        assert any(n.startswith(prefix) and n.endswith("_quick.png") for n in names), prefix
    assert not any(n.endswith((".pt", ".lock")) for n in names)  # caches live elsewhere
    assert _tracked_changes() == before
    # a rerun with the same settings skips every finished run
    assert _run(monkeypatch, fake_env / "w", argv) == 0
    again = json.loads((out / "finetune_images_quick.json").read_text())
    assert [r["step_ms"] for r in again["rows"]] == [r["step_ms"] for r in rows]


def test_bench_rejects_bad_lists(fake_env, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "finetune-images", "--quick", "--methods", "sgd"])
    assert "choose from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "finetune-images", "--quick", "--rewards", "beauty"])


def test_bench_full_run_without_weights_names_the_command(fake_env, monkeypatch, capsys):
    assert _run(monkeypatch, fake_env / "w", ["bench", "finetune-images"]) == 1
    assert "samplegrad train-ddpm --dataset fashion" in capsys.readouterr().err


def test_plan_covers_the_grid():
    bench = fi.BenchConfig(n_steps=(10, 25), seeds=(0, 1), kl_sweep=(0.1,))
    jobs = fi.plan(bench)
    n_free = len([m for m in bench.methods if m in fi.GRADIENT_FREE])
    n_all = len(bench.methods)
    # 2 rewards x 2 T x 2 seeds, threshold only for the gradient-free methods, sweep
    assert len(jobs) == 2 * 2 * 2 * n_all + 2 * 2 * n_free + n_all
    assert n_free == 2  # ddpo, ddpo-4
    assert {j["T"] for j in jobs if j["kl_weight"] == 0.1} == {10}


def test_time_budget_stops_runs_and_keeps_them_apart(fake_env, monkeypatch):
    """--time-budget: a run stops after the θ step that crosses the budget (here the first),
    its rows carry the budget, and runs without a budget are separate rows and plots."""
    base = ["bench", "finetune-images", "--quick", "--methods", "draft-1", "--rewards",
            "brightness", "--theta-steps", "3", "--threads", "1"]
    assert _run(monkeypatch, fake_env / "w", base + ["--time-budget", "1e-6"]) == 0
    assert _run(monkeypatch, fake_env / "w", base) == 0
    out = fake_env / "w" / "runs" / "finetune-images"
    rows = json.loads((out / "finetune_images_quick.json").read_text())["rows"]
    budget = [r for r in rows if r.get("time_budget") is not None]
    plain = [r for r in rows if r.get("time_budget") is None]
    assert len(budget) == len(plain) == 1
    assert len(budget[0]["trace"]) == budget[0]["theta_steps_done"] == 1
    assert len(plain[0]["trace"]) == plain[0]["theta_steps_done"] == 3
    names = {p.name for p in out.iterdir()}
    assert any("_budget1e-06s_quick.png" in n and n.startswith("curves_") for n in names)
    table = (out / "finetune_images_quick.md").read_text()
    assert "budget s" in table and "steps done" in table


def test_method_names_map_to_their_configs():
    """``draft-K`` backprops through K steps, ``ddpo-K`` takes K inner epochs; plain ``ddpo``
    one."""
    assert fi._base_cfg("draft-5", 8, 1e-5, 0.1, 0).grad_steps == 5
    assert fi._base_cfg("ddpo", 8, 1e-5, 0.1, 0).inner_epochs == 1
    cfg = fi._base_cfg("ddpo-4", 8, 1e-5, 0.1, 0)
    assert (cfg.inner_epochs, cfg.pop_size, cfg.lr, cfg.kl_weight) == (4, 8, 1e-5, 0.1)


def test_rows_rerun_by_another_invocation_meanwhile_are_kept(fake_env, monkeypatch):
    """Two invocations share an OUT: rows another one (re)writes while this one runs win
    over the stale copies this one read at its start (only its own runs win)."""
    base = ["bench", "finetune-images", "--quick", "--rewards", "brightness", "--threads", "1"]
    assert _run(monkeypatch, fake_env / "w", base + ["--methods", "draft-1"]) == 0
    path = fake_env / "w" / "runs" / "finetune-images" / "finetune_images_quick.json"
    real_run_one = fi.run_one

    def run_one(method, *a, **k):  # the other invocation reruns draft-1 meanwhile
        if method == "unrolled" and a[6]:  # a timed run (the warm-up has no description)
            got = json.loads(path.read_text())
            got["rows"][0]["step_ms"] = -1.0
            path.write_text(json.dumps(got))
        return real_run_one(method, *a, **k)

    monkeypatch.setattr(fi, "run_one", run_one)
    assert _run(monkeypatch, fake_env / "w", base + ["--methods", "draft-1,unrolled"]) == 0
    rows = {r["method"]: r for r in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"draft-1", "unrolled"}
    assert rows["draft-1"]["step_ms"] == -1.0


def test_pretrained_metrics_are_kept_per_evaluation_size(fake_env, monkeypatch):
    """Runs evaluated on another number of samples add the pretrained model's metrics at that
    size instead of overwriting the ones the earlier rows were compared with."""
    base = ["bench", "finetune-images", "--quick", "--rewards", "brightness", "--methods",
            "draft-1", "--threads", "1"]
    assert _run(monkeypatch, fake_env / "w", base) == 0
    path = fake_env / "w" / "runs" / "finetune-images" / "finetune_images_quick.json"
    first = json.loads(path.read_text())["pretrained"]
    assert list(first) == ["T3|n8"] and first["T3|n8"]["eval_n"] == 8
    assert _run(monkeypatch, fake_env / "w", base + ["--eval-n", "4"]) == 0
    got = json.loads(path.read_text())
    assert set(got["pretrained"]) == {"T3|n8", "T3|n4"}
    assert got["pretrained"]["T3|n8"] == first["T3|n8"]
    assert got["pretrained"]["T3|n4"]["eval_n"] == 4
    assert [r["eval_n"] for r in got["rows"]] == [8]  # the run itself was done already


def test_no_rss_probe_times_without_measuring_rss(fake_env, monkeypatch):
    pinned = []
    monkeypatch.setattr(fi, "_pin_malloc", lambda: pinned.append(True))
    argv = ["bench", "finetune-images", "--quick", "--rewards", "brightness", "--methods",
            "draft-1", "--threads", "1", "--no-rss-probe"]
    assert _run(monkeypatch, fake_env / "w", argv) == 0
    got = json.loads((fake_env / "w" / "runs" / "finetune-images" /
                      "finetune_images_quick.json").read_text())
    assert not pinned and got["meta"]["rss_probe"] is False
    (row,) = got["rows"]
    assert row["rss_probe"] is False and row["step_ms"] > 0
    assert np.isnan(float(row["peak_rss_mib"]))  # written as "nan"
