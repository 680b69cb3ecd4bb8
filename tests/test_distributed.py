"""Data parallelism (samplegrad.distributed): 2-process ``gloo`` runs against one process.

One spawned 2-rank run (this file started as a script with torchrun's environment) does
every loop in float64 (VAE training with a pathwise and a score-function estimator, DDPM
training, masked-diffusion training, the Implicit Diffusion queue and its unrolled
baseline, the collectives) and writes rank 0's results; the tests compare them with the
same loops in this (single) process: same parameters up to reduction order (1e-10). The
2-rank checkpoints (VAE, queue) are resumed here in one process and compared with an
uninterrupted one-process run. At the end of that run rank 1 dies abruptly and rank 0 must
get a clear error instead of hanging. Another test runs the example under ``torchrun``.
Every spawned process is bounded in time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # hard bound on a spawned run (they take seconds)
TOL = 1e-10
STEPS, MORE = 3, 2  # steps on 2 ranks (then checkpoint), steps more after resuming


# ---------------------------------------------------------------- the loops (any world size)
def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def _vae(estimator: str, steps: int, ckpt: Path | None = None) -> torch.Tensor:
    from samplegrad_bench.tasks import vae

    torch.set_default_dtype(torch.float64)
    data = (torch.rand(40, 12, generator=torch.Generator().manual_seed(5)) < 0.4).double()
    cfg = vae.VAETrainConfig(estimator=estimator, n_samples=3, lr=1e-2, batch_size=7,
                             knobs={} if estimator != "redge" else {"t1": 0.5})
    state = vae.train_init(vae.VAEConfig(n_pixels=12, n_latent=3, n_classes=4, hidden=(16,)),
                           cfg, seed=1)
    vae.fit(state, data, cfg, steps, checkpoint=ckpt, every=1)
    return torch.cat([_flat(state.model), torch.tensor(state.history[-1:])])


def _ddpm(steps: int) -> torch.Tensor:
    from samplegrad import distributed as sgd
    from samplegrad.diffusion import EpsMLP, ddpm_loss, linear_alpha_bars

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(2)
    model = EpsMLP(dim=4, hidden=16, n_blocks=1, temb_dim=8)
    with torch.no_grad():  # the output layer starts at zero: move it so every layer learns
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(4))
    ab = linear_alpha_bars(100, device="cpu")
    gen = torch.Generator().manual_seed(6)
    w = sgd.world()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (7,), generator=gen)
        loss = ddpm_loss(model, x[idx], ab, gen, shard=sgd.shard(7) if w.distributed else None)
        opt.zero_grad()
        loss.backward()
        sgd.all_reduce_grads(model, op="sum")
        opt.step()
    return _flat(model)


def _mdm(steps: int) -> torch.Tensor:
    from samplegrad.discrete import train as mdm
    from samplegrad.discrete.model import MDMConfig

    torch.set_default_dtype(torch.float64)
    data = torch.randint(0, 3, (30, 4), generator=torch.Generator().manual_seed(7))
    out = []
    for weighting in ("elbo", "unweighted"):
        cfg = mdm.MDMTrainConfig(steps=steps, batch_size=7, warmup=1, weighting=weighting,
                                 grad_clip=0.5)
        state = mdm.train_init(MDMConfig(vocab_size=3, seq_len=4, width=8, depth=1, heads=2),
                               cfg, seed=3)
        for _ in range(steps):
            mdm.train_step(state, data, cfg)
        out += [_flat(state.model), torch.tensor(state.losses)]
    return torch.cat(out)


def _queue_setup():
    from samplegrad.diffusion import EpsMLP, linear_alpha_bars, sampling_schedule
    from samplegrad.implicit import finetune as ft

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(8)
    model = EpsMLP(dim=2, hidden=8, n_blocks=1, temb_dim=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
    sched = sampling_schedule(linear_alpha_bars(100, device="cpu"), n_steps=3,
                              dtype=torch.float64)
    cfg = ft.FinetuneConfig(pop_size=5, lr=1e-2, kl_weight=0.1, seed=4)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return -(x - 1.0).pow(2).sum(-1)

    return ft, model, sched, cfg, reward


def _queue(steps: int, ckpt: Path | None = None) -> torch.Tensor:
    from samplegrad import distributed as sgd
    from samplegrad.checkpoint import save_checkpoint

    ft, model, sched, cfg, reward = _queue_setup()
    state = ft.finetune_init(model, sched, cfg, shape=2)
    rewards = []
    for _ in range(steps):
        state, info = ft.finetune_step(state, model, sched, reward, cfg)
        rewards.append(info["reward"])
    blob = ft.queue_state_dict(state)  # collective: every rank
    if ckpt is not None and sgd.is_main():
        save_checkpoint(ckpt, {"queue": blob, "model": model.state_dict()})
    sgd.barrier()
    return torch.cat([_flat(model), blob["paths"].reshape(-1), torch.tensor(rewards)])


def _queue_resume(ckpt: Path, more: int) -> torch.Tensor:
    from samplegrad.checkpoint import load_checkpoint

    ft, model, sched, cfg, reward = _queue_setup()
    state = ft.finetune_init(model, sched, cfg, shape=2)
    blob = load_checkpoint(ckpt)
    model.load_state_dict(blob["model"])
    state = ft.load_queue_state_dict(state, blob["queue"])
    for _ in range(more):
        state, _ = ft.finetune_step(state, model, sched, reward, cfg)
    return torch.cat([_flat(model), ft.queue_state_dict(state)["paths"].reshape(-1)])


def _unrolled(steps: int) -> torch.Tensor:
    ft, model, sched, cfg, reward = _queue_setup()
    state = ft.unrolled_init(model, cfg, shape=2)
    rewards = []
    for _ in range(steps):
        state, info = ft.unrolled_step(state, model, sched, reward, cfg)
        rewards.append(info["reward"])
    return torch.cat([_flat(model), torch.tensor(rewards)])


def _guided_sample(rank: int | None = None, n: int = 5) -> torch.Tensor:
    """Reward-guided masked-diffusion sampling, items sharded over the ranks (each rank's
    noise from its rank_generator), results gathered."""
    from samplegrad import distributed as sgd
    from samplegrad.discrete import GuidanceConfig, make_guide, sample
    from samplegrad.discrete.model import Denoiser, MDMConfig

    guide = make_guide(lambda z: z[..., 0].sum((-1,)), GuidanceConfig())

    def run(sl: slice) -> torch.Tensor:
        torch.manual_seed(12)  # the guide's estimator draws from the global stream
        gen = sgd.rank_generator(5, rank=rank)
        return sample(model, 4, batch_size=sl.stop - sl.start, guide=guide, generator=gen)

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(11)
        model = Denoiser(MDMConfig(vocab_size=3, seq_len=4, width=8, depth=1, heads=2))
        return sgd.sharded_map(run, n).double()
    finally:
        torch.set_default_dtype(old)


def _all_loops(out: Path) -> dict[str, torch.Tensor]:
    return {"vae_redge": _vae("redge", STEPS, out / "vae_redge.ckpt"),
            "vae_rloo": _vae("rloo", STEPS, out / "vae_rloo.ckpt"),
            "ddpm": _ddpm(STEPS), "mdm": _mdm(STEPS),
            "queue": _queue(STEPS + 1, out / "queue.ckpt"), "unrolled": _unrolled(STEPS)}


# ---------------------------------------------------------------- spawned ranks
def _worker(mode: str, out: Path) -> None:
    """Runs in each spawned rank (torchrun's environment variables are set)."""
    torch.set_num_threads(1)
    from samplegrad import distributed as sgd

    w = sgd.init_from_env(timeout_s=float(os.environ.get("TEST_DIST_TIMEOUT", "60")))
    assert w.distributed and w.backend == "gloo" and w.world_size == 2
    results = _all_loops(out)
    # the collectives themselves
    r = w.rank
    got = sgd.gather(torch.full((r + 1, 2), float(r)), dim=0)
    results["gather"] = got.reshape(-1)
    results["gather_object"] = torch.tensor(sgd.gather_object(r * 10), dtype=torch.float64)
    g = sgd.rank_generator(0)
    results["rank_draw"] = sgd.gather(torch.rand(3, generator=g, dtype=torch.float64))
    results["sharded_map"] = sgd.sharded_map(
        lambda sl: torch.arange(sl.start, sl.stop, dtype=torch.float64), 7)
    results["guided"] = _guided_sample()
    torch.save(results, out / f"rank{r}.pt")
    sgd.barrier()
    # a crash: rank 1 dies without a word (as a killed rank does); rank 0 must not hang
    sgd.set_timeout(3.0)
    if r == 1:
        os._exit(3)
    t0 = time.perf_counter()
    try:
        for _ in range(1000):
            sgd.all_reduce(torch.ones(3))
            sgd.barrier()
        (out / "crash.txt").write_text("no error")
    except sgd.CollectiveError as e:
        (out / "crash.txt").write_text(f"{time.perf_counter() - t0:.1f}s {e}")


# what a lost race for the free port looks like (another process bound it in between)
_RENDEZVOUS_ERRORS = ("Address already in use", "EADDRINUSE", "DistNetworkError",
                      "failed to bind", "Connection refused")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(mode: str, out: Path, n: int = 2, timeout_s: float = 90
           ) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    procs = []
    for rank in range(n):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "TEST_DIST_TIMEOUT": str(timeout_s), "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                              os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, __file__, mode, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=TIMEOUT_S)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("dist")
    procs = _spawn("loops", out)
    if procs[0].returncode != 0 and any(
            m in p.stderr for p in procs for m in _RENDEZVOUS_ERRORS):
        procs = _spawn("loops", out)  # the free port was taken meanwhile: once more
    assert procs[0].returncode == 0, f"rank 0 exited {procs[0].returncode}\n" \
        f"{procs[0].stderr[-4000:]}"
    assert procs[1].returncode == 3, f"rank 1 exited {procs[1].returncode} (not its crash)\n" \
        f"{procs[1].stderr[-4000:]}"
    r0 = torch.load(out / "rank0.pt")
    r1 = torch.load(out / "rank1.pt")
    for k in ("vae_redge", "vae_rloo", "ddpm", "mdm", "queue", "unrolled"):
        assert torch.equal(r0[k], r1[k]), f"{k}: the ranks disagree"
    return out, r0


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> dict[str, torch.Tensor]:
    old = torch.get_default_dtype()
    try:
        return _all_loops(tmp_path_factory.mktemp("single"))
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("loop", ["vae_redge", "vae_rloo", "ddpm", "mdm", "queue", "unrolled"])
def test_two_ranks_match_one_process(loop, two_ranks, one_rank) -> None:
    _, r0 = two_ranks
    assert r0[loop].shape == one_rank[loop].shape
    diff = (r0[loop] - one_rank[loop]).abs().max().item()
    assert diff <= TOL, f"{loop}: max |2 ranks - 1 process| = {diff:.3g}"
    # and training did move the parameters (the comparison is not vacuous)
    assert one_rank[loop].abs().sum() > 0


def test_collectives(two_ranks) -> None:
    _, r0 = two_ranks
    assert r0["sharded_map"].tolist() == [float(i) for i in range(7)]
    from samplegrad import distributed as sgd
    got = r0["guided"]  # rank 0's rows are what one process draws with rank 0's stream
    assert got.shape == (5, 4) and not (got == 3).any()  # all unmasked
    n0 = sgd.shard(5, 0, 2).stop
    assert torch.equal(got[:n0], _guided_sample(rank=0, n=n0))
    assert r0["gather"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert r0["gather_object"].tolist() == [0.0, 10.0]
    a, b = r0["rank_draw"][:3], r0["rank_draw"][3:]
    assert not torch.equal(a, b)  # independent streams per rank
    from samplegrad import distributed as sgd
    g0 = sgd.rank_generator(0, rank=0)
    assert torch.equal(torch.rand(3, generator=g0, dtype=torch.float64), a)


@pytest.mark.parametrize("estimator", ["redge", "rloo"])
def test_vae_resumes_from_two_rank_checkpoint_on_one(estimator, two_ranks, tmp_path) -> None:
    out, _ = two_ranks
    old = torch.get_default_dtype()
    try:
        ckpt = tmp_path / "vae.ckpt"
        ckpt.write_bytes((out / f"vae_{estimator}.ckpt").read_bytes())
        resumed = _vae(estimator, STEPS + MORE, ckpt)
        straight = _vae(estimator, STEPS + MORE)
    finally:
        torch.set_default_dtype(old)
    assert (resumed - straight).abs().max().item() <= TOL


def test_queue_resumes_from_two_rank_checkpoint_on_one(two_ranks) -> None:
    out, _ = two_ranks
    old = torch.get_default_dtype()
    try:
        resumed = _queue_resume(out / "queue.ckpt", MORE)
        ft, model, sched, cfg, reward = _queue_setup()
        state = ft.finetune_init(model, sched, cfg, shape=2)
        for _ in range(STEPS + 1 + MORE):
            state, _ = ft.finetune_step(state, model, sched, reward, cfg)
        straight = torch.cat([_flat(model), state.paths.reshape(-1)])
    finally:
        torch.set_default_dtype(old)
    assert (resumed - straight).abs().max().item() <= TOL


def test_crashed_rank_makes_the_other_exit(two_ranks) -> None:
    out, _ = two_ranks
    msg = (out / "crash.txt").read_text()
    assert "another rank probably crashed" in msg, msg
    assert float(msg.split("s ")[0]) < 30, msg


def test_single_process_is_a_no_op() -> None:
    from samplegrad import distributed as sgd

    w = sgd.world()
    assert (w.rank, w.world_size, w.distributed, w.is_main) == (0, 1, False, True)
    t = torch.ones(2)
    assert sgd.all_reduce(t) is t and t.tolist() == [1.0, 1.0]
    assert sgd.gather(t) is t and sgd.gather_object(3) == [3]
    assert sgd.shard(7) == slice(0, 7)
    assert [sgd.shard(7, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 7)]
    sgd.barrier()
    assert sgd.is_main()
    x = torch.arange(6.0).reshape(3, 2)
    e = sgd.embed_shard(x[1:2], slice(1, 2), 3)
    assert e.tolist() == [[0.0, 0.0], [2.0, 3.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="op"):
        sgd.all_reduce(t, "prod")
    with pytest.raises(ValueError, match="rank"):
        sgd.shard(4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="n"):
        sgd.shard(-1)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 200), ws=st.integers(1, 9))
def test_shards_partition_the_items(n, ws) -> None:
    from samplegrad import distributed as sgd

    sls = [sgd.shard(n, r, ws) for r in range(ws)]
    assert [i for sl in sls for i in range(sl.start, sl.stop)] == list(range(n))
    sizes = [sl.stop - sl.start for sl in sls]
    assert max(sizes) - min(sizes) <= 1
    x = torch.arange(float(n))
    assert torch.equal(sum(sgd.embed_shard(x[sl], sl, n) for sl in sls), x) if n else True


@pytest.mark.slow
def test_example_under_torchrun(tmp_path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "SAMPLEGRAD_HOME": str(tmp_path / "home")}
    proc = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port",
                           str(_free_port()), str(ROOT / "examples" / "distributed_vae.py"),
                           "--quick", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("max_abs_diff_vs_single_process="), proc.stdout[-2000:]
    assert float(last.split("=")[1]) <= 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_world_picks_cuda_without_init() -> None:
    from samplegrad import distributed as sgd

    assert sgd.world().device.type == "cuda"


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
