"""Data-parallel throughput: every loop on 1 and on N processes (``torch.distributed``).

For each world size the runner starts that many processes on this machine (``gloo`` on
CPU, ``nccl`` with one GPU per rank when CUDA is available; the same environment variables
torchrun sets), one intra-op thread per process, and each runs the loops with the same
*global* batch: VAE training (ReDGE), DDPM training, masked-diffusion training and the
Implicit Diffusion queue (theta steps). Rank 0 times ``steps`` steps after a warm-up and
reports steps/s, samples/s and the share of a step spent in collectives (which includes
waiting for the slower rank). Speed-up = steps/s on N processes over steps/s on 1 (the
same global batch, so the same work per step).

    samplegrad bench distributed --quick
    samplegrad bench distributed --world-sizes 1,2 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from samplegrad_bench._args import comma_list, int_at_least
from samplegrad_bench._common import markdown_table, write_json

LOOPS = ("vae", "ddpm", "mdm", "queue")
TIMEOUT_S = 1800


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world-sizes", type=comma_list(int), default=None, metavar="N,...",
                   help="numbers of processes to compare (default 1,2)")
    p.add_argument("--loops", type=comma_list(choices=LOOPS), default=None,
                   metavar="NAME,...", help="comma list of " + ",".join(LOOPS))
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help="timed steps per loop (default 30; quick 3)")


# ---------------------------------------------------------------- the loops (in a rank)
def _vae(quick: bool, device: torch.device):
    from samplegrad_bench.tasks import vae

    d, b = (16, 16) if quick else (64, 256)
    vcfg = vae.VAEConfig(n_pixels=d, n_latent=4 if quick else 20, n_classes=4 if quick else 10,
                         hidden=(32,) if quick else (256, 128))
    cfg = vae.VAETrainConfig(estimator="redge", batch_size=b)
    state = vae.train_init(vcfg, cfg, seed=0, device=device)
    data = (torch.rand(2048, d, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    data = data.to(device)

    def step() -> None:
        vae.train_step(state, vae.sample_batch(data, cfg), cfg)
    return step, b


def _ddpm(quick: bool, device: torch.device):
    from samplegrad import distributed as sgd
    from samplegrad.diffusion import EpsMLP, ddpm_loss, linear_alpha_bars

    d, b = (16, 16) if quick else (64, 256)
    torch.manual_seed(0)
    model = EpsMLP(dim=d, hidden=32 if quick else 256, n_blocks=1 if quick else 3).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2048, d, generator=torch.Generator().manual_seed(1)).to(device)
    ab = linear_alpha_bars(1000, device=device).float()
    gen = torch.Generator(device=device).manual_seed(2)
    dist = sgd.world().distributed

    def step() -> None:
        idx = torch.randint(0, len(x), (b,), generator=gen, device=device)
        loss = ddpm_loss(model, x[idx], ab, gen, shard=sgd.shard(b) if dist else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sgd.all_reduce_grads(model, op="sum")
        opt.step()
    return step, b


def _mdm(quick: bool, device: torch.device):
    from samplegrad.discrete import train as mdm
    from samplegrad.discrete.model import MDMConfig

    b = 16 if quick else 64
    mcfg = MDMConfig(vocab_size=9, seq_len=16 if quick else 81, width=32 if quick else 128,
                     depth=1 if quick else 3, heads=4)
    cfg = mdm.MDMTrainConfig(steps=1000, batch_size=b)
    state = mdm.train_init(mcfg, cfg, seed=0, device=device)
    data = torch.randint(0, 9, (2048, mcfg.seq_len), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        mdm.train_step(state, data, cfg)
    return step, b


def _queue(quick: bool, device: torch.device):
    from samplegrad.diffusion import EpsMLP, linear_alpha_bars, sampling_schedule
    from samplegrad.implicit import finetune as ft

    d, n = (8, 8) if quick else (64, 64)
    torch.manual_seed(0)
    model = EpsMLP(dim=d, hidden=32 if quick else 256, n_blocks=1 if quick else 3).to(device)
    sched = sampling_schedule(linear_alpha_bars(1000, device=device), n_steps=4 if quick else 10)
    cfg = ft.FinetuneConfig(pop_size=n, lr=1e-4, kl_weight=0.1)
    state = [ft.finetune_init(model, sched, cfg, shape=d)]

    def reward(x: torch.Tensor) -> torch.Tensor:
        return -x.pow(2).sum(-1)

    def step() -> None:
        state[0], _ = ft.finetune_step(state[0], model, sched, reward, cfg)
    return step, n


def _worker(out: Path, loops: list[str], steps: int, quick: bool) -> None:
    torch.set_num_threads(1)
    from samplegrad import distributed as sgd

    w = sgd.init_from_env(timeout_s=600)
    rows = []
    for name in loops:
        step, batch = {"vae": _vae, "ddpm": _ddpm, "mdm": _mdm, "queue": _queue}[name](
            quick, w.device)
        for _ in range(2):  # warm-up
            step()
        sgd.barrier()
        sgd.reset_comm_seconds()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if w.device.type == "cuda":
            torch.cuda.synchronize(w.device)
        sgd.barrier()
        seconds = time.perf_counter() - t0
        rows.append({"loop": name, "world_size": w.world_size, "batch": batch,
                     "steps_per_s": steps / seconds, "samples_per_s": steps * batch / seconds,
                     "comm_share": sgd.comm_seconds() / seconds, "seconds": seconds})
    if w.is_main:
        (out / f"world{w.world_size}.json").write_text(json.dumps(rows))
    sgd.destroy()


# ---------------------------------------------------------------- the launcher
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, out: Path, loops: list[str], steps: int, quick: bool) -> list[dict]:
    port, procs = _free_port(), []
    for rank in range(n):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "samplegrad_bench.runners.distributed", str(out),
             ",".join(loops), str(steps), "1" if quick else "0"], env=env,
            stderr=subprocess.PIPE, text=True))
    try:
        errs = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, e) in enumerate(zip(procs, errs)):
        if p.returncode != 0:
            raise RuntimeError(f"bench distributed: rank {rank} of {n} exited {p.returncode}"
                               f"\n{e[-3000:]}")
    return json.loads((out / f"world{n}.json").read_text())


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = args.world_sizes or [1, 2]
    if any(s < 1 for s in sizes):
        raise ValueError(f"--world-sizes: every size must be >= 1, got {sizes}")
    if torch.cuda.is_available() and max(sizes) > torch.cuda.device_count():
        raise ValueError(f"--world-sizes: nccl needs one GPU per process, {max(sizes)} asked "
                         f"for and {torch.cuda.device_count()} visible")
    loops = args.loops or list(LOOPS)
    steps = args.steps or (3 if args.quick else 30)
    print(f"world sizes {sizes}, loops {loops}, {steps} timed steps each, one thread per "
          f"process, backend {'nccl' if torch.cuda.is_available() else 'gloo'}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            got = _launch(n, Path(tmp), loops, steps, args.quick)
            for r in got:
                print(f"  {r['loop']:>6s} on {n}: {r['steps_per_s']:8.2f} steps/s, "
                      f"comm {100 * r['comm_share']:5.1f}%", flush=True)
            rows += got
    base = {r["loop"]: r["steps_per_s"] for r in rows if r["world_size"] == sizes[0]}
    table = []
    for r in rows:
        r["speedup"] = r["steps_per_s"] / base[r["loop"]]
        table.append({"loop": r["loop"], "processes": r["world_size"],
                      "global batch": r["batch"], "steps/s": r["steps_per_s"],
                      "samples/s": r["samples_per_s"], f"speed-up vs {sizes[0]}": r["speedup"],
                      "comm share": r["comm_share"]})
    stem = "distributed_quick" if args.quick else "distributed"
    result = {"world_sizes": sizes, "loops": loops, "steps": steps, "quick": args.quick,
              "device": "cuda" if torch.cuda.is_available() else "cpu",
              "cpu_count": os.cpu_count(), "rows": rows}
    write_json(args.out / f"{stem}.json", result)
    text = markdown_table(table, digits=3)
    (args.out / f"{stem}.md").write_text(text + "\n")
    print()
    print(text)
    return result


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4] == "1")
