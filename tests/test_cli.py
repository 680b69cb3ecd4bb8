"""The command line: listing, --version, flags, output and cache folders, clear errors (the
demo itself: tests/test_demo.py)."""

import json
from pathlib import Path

import pytest

import samplegrad
from samplegrad_bench import cli, paths, run_all
from samplegrad_bench._args import comma_list, positive_int, seed_list
from samplegrad_bench.cli import BENCHES, TOOLS, main

REPO = Path(__file__).resolve().parents[1]


def _parse(argv):
    return cli._build_parser(argv).parse_args(argv)


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "redge" in out and "polyprog" in out and "exactness" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"samplegrad {samplegrad.__version__}"


def test_every_command_has_a_description_and_a_runner():
    import importlib

    for name, (module, help_) in {**BENCHES, **TOOLS}.items():
        assert help_ and "\n" not in help_, name
        mod = importlib.import_module(module)
        assert callable(mod.run) and callable(mod.add_arguments), name
        args = _parse(["bench", name] if name in BENCHES else [name])
        assert args.out is None and args.publish is False and args.threads is None
    assert set(BENCHES) == {"gradients", "polyprog", "sudoku", "vae", "langevin", "finetune",
                            "spectral", "guidance", "speed", "exactness", "langevin-speed",
                            "mdm-finetune", "spectral-tilt", "spectral-scale", "distributed",
                            "finetune-images"}


def test_default_output_is_runs_name_under_the_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--steps", "2", "--draws", "10", "--budget", "0.1"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == [
        "demo.json", "demo.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert "outputs in runs/demo/" in capsys.readouterr().err


def test_output_dir_resolution():
    ns = _parse(["bench", "vae"])
    assert cli.output_dir(ns) == Path("runs/vae")
    ns = _parse(["bench", "vae", "--out", "x/y"])
    assert cli.output_dir(ns) == Path("x/y")
    # --publish: the checkout's docs/results/NAME (speed and exactness share "estimators";
    # the training tools publish beside the benchmark that uses them)
    for argv, name in ((["bench", "vae"], "vae"), (["bench", "speed"], "estimators"),
                       (["bench", "exactness"], "estimators"), (["demo"], "demo"),
                       (["train-ddpm"], "finetune"), (["train-mdm"], "guidance")):
        got = cli.output_dir(_parse([*argv, "--publish"]))
        assert got == REPO / "docs" / "results" / name
        assert got.is_dir(), got  # the committed results folder exists
    assert paths.publish_dir("sudoku") == REPO / "docs" / "results" / "sudoku"


def test_publish_outside_a_checkout_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(paths.NotACheckoutError, match="not inside one"):
        paths.results_root(tmp_path)
    monkeypatch.setattr(paths, "_SOURCE_ROOT", tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["bench", "exactness", "--publish"])
    assert e.value.code == 2
    assert "--publish writes into docs/results/" in capsys.readouterr().err


def test_publish_refuses_quick_runs_and_out(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "exactness", "--quick", "--publish"])
    assert e.value.code == 2 and "quick runs are never published" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--publish", "--out", "x"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_cache_dir_honours_samplegrad_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLEGRAD_HOME", str(tmp_path))
    assert paths.cache_dir() == tmp_path
    assert paths.cache_dir("checkpoints") == tmp_path / "checkpoints"
    from samplegrad_bench.runners.train_ddpm import default_weights
    from samplegrad_bench.runners.train_mdm import default_ckpt_dir

    assert default_weights() == tmp_path / "checkpoints" / "ddpm_digits.pt"
    assert default_ckpt_dir(quick=True) == tmp_path / "checkpoints" / "mdm-quick"
    monkeypatch.delenv("SAMPLEGRAD_HOME")
    import platformdirs

    assert paths.cache_dir("mala") == Path(platformdirs.user_cache_dir("samplegrad")) / "mala"


def test_tests_use_a_temporary_cache(_samplegrad_home):
    import platformdirs

    assert paths.cache_dir() == _samplegrad_home  # conftest's session folder
    assert not _samplegrad_home.is_relative_to(REPO)
    assert _samplegrad_home != Path(platformdirs.user_cache_dir("samplegrad"))


@pytest.mark.parametrize("argv, flag", [
    (["demo", "--threads", "0"], "--threads"),
    (["demo", "--threads", "two"], "--threads"),
    (["demo", "--steps", "-3"], "--steps"),
    (["demo", "--seed", "-1"], "--seed"),
    (["bench", "polyprog", "--seeds", "0,-1"], "--seeds"),
    (["bench", "polyprog", "--powers", "2,x"], "--powers"),
    (["bench", "gradients", "--methods", "redge,nope"], "--methods"),
    (["bench", "gradients", "--problems", "nope"], "--problems"),
    (["bench", "finetune", "--n-steps", "10,0"], "--n-steps"),
    (["bench", "finetune", "--digit", "12"], "--digit"),
    (["bench", "guidance", "--tasks", "sudoku,chess"], "--tasks"),
    (["bench", "spectral", "--sections", "gmm,nope"], "--sections"),
    (["bench", "vae", "--seed", "1"], "--seed"),  # vae takes --seeds, not --seed
])
def test_bad_values_are_usage_errors(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # should a bad value slip through, nothing lands in the checkout
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_unknown_method_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "sudoku", "--methods", "redge,nope"])
    err = capsys.readouterr().err
    assert "argument --methods: unknown 'nope'; choose from redge," in err and "rloo" in err


def test_one_list_syntax():
    assert _parse(["bench", "gradients", "--methods", "redge,rloo"]).methods == ["redge", "rloo"]
    assert _parse(["bench", "vae", "--methods", "rloo"]).methods == ["rloo"]
    assert _parse(["bench", "guidance", "--methods", "unguided,redge"]).methods == [
        "unguided", "redge"]
    assert _parse(["bench", "polyprog", "--seeds", "0,2"]).seeds == [0, 2]
    assert _parse(["bench", "vae", "--seeds", "3,4,5"]).seeds == [3, 4, 5]
    assert _parse(["bench", "polyprog", "--powers", "1.5,3"]).powers == [1.5, 3.0]
    assert _parse(["bench", "finetune", "--n-steps", "10,25"]).n_steps == [10, 25]
    assert _parse(["bench", "sudoku", "--budgets", "2,4"]).budgets == [2, 4]
    assert _parse(["demo", "--threads", "2"]).threads == 2
    assert comma_list()(" a, b ,") == ["a", "b"]
    assert seed_list("0") == [0]
    assert positive_int("3") == 3
    with pytest.raises(Exception, match="expected a comma-separated list"):
        comma_list()(",")


def test_unknown_bench_is_an_error():
    with pytest.raises(SystemExit):
        main(["bench", "nope"])


def test_missing_bench_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "BENCH_PACKAGES", ("numpy", "samplegrad_no_such_package"))
    assert main(["bench", "gradients", "--quick"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "samplegrad_no_such_package" in err
    assert "pip install 'samplegrad[bench]'" in err
    assert main(["list"]) == 0  # the library's own commands still work


def test_run_all_uses_the_bench_list():
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "gradients,nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        run_all.main(["--quick", "--publish"])


def test_bench_gradients_tiny_run_writes_json_and_plot(tmp_path, capsys):
    argv = ["bench", "gradients", "--quick", "--n-draws", "20", "--methods",
            "redge,gumbel_hard,rloo,reinforce", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "| estimator" in capsys.readouterr().out
    data = json.loads((tmp_path / "gradients_quick.json").read_text())
    best = data["best"]["mlp_L4_K5"]
    assert {r["estimator"] for r in best} == {"redge", "gumbel_hard", "rloo", "reinforce"}
    # grid: redge 2 t1 x 2 n_steps, gumbel 2 taus, rloo 1, reinforce 2 baselines; 2 n each
    assert len(data["rows"]) == (4 + 2 + 1 + 2) * 2
    assert (tmp_path / "gradients_quick.png").stat().st_size > 0


def test_bench_polyprog_tiny_run_writes_json_and_resumes(tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["bench", "polyprog", "--quick", "--steps", "4", "--sweep-steps", "2", "--n-vars",
            "8", "--batch", "8", "--seeds", "0,1", "--powers", "2,3", "--sweep-power", "2",
            "--methods", "redge,reinforce,rloo", "--cache", str(cache),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "gap to optimum" in capsys.readouterr().out
    path = tmp_path / "out" / "polyprog_quick.json"
    data = json.loads(path.read_text())
    assert {r["estimator"] for r in data["rows"]} == {"redge", "reinforce", "rloo"}
    # knobs swept once (at p=2, 4 + 2 + 1 settings), then 3 methods x 2 powers x 2 seeds
    assert len(data["runs"]) == 12 and len(data["sweep"]) == 4 + 2 + 1
    assert {s["power"] for s in data["sweep"]} == {2.0}
    n_cached = len(list(cache.iterdir()))
    assert n_cached == 12 + 7
    assert main(argv) == 0  # a second run reads every run back from the cache
    again = json.loads(path.read_text())
    assert len(list(cache.iterdir())) == n_cached
    assert [r["final E[loss]"] for r in again["rows"]] == [r["final E[loss]"]
                                                          for r in data["rows"]]
