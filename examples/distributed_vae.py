"""Data-parallel training of a categorical VAE under ``torchrun``, checked against one process.

Each rank holds a copy of the model. At every step all ranks draw the same *global*
minibatch (indices from a shared seed) and the estimator's noise for the whole batch
(``samplegrad.distributed.embed_shard``), run the encoder and decoder on their own
``shard`` of the items only, and sum their gradients (``all_reduce_grads(op="sum")``):
each rank's loss is its items' share of the global batch mean, so the sum is the
one-process gradient and the parameters stay identical to a one-process run, up to the
order of floating-point additions. Rank 0 then replays the same steps alone and prints the
largest parameter difference as the last line; rank 0 alone writes the checkpoint and the
results (the other ranks wait at a barrier).

    torchrun --nproc_per_node=2 examples/distributed_vae.py --quick
    torchrun --nproc_per_node=4 examples/distributed_vae.py --steps 2000 --batch-size 256
    python examples/distributed_vae.py --quick          # one process (difference 0)

Backend: ``gloo`` on CPU, ``nccl`` (one GPU per rank, ``cuda:LOCAL_RANK``) when CUDA is
available; see docs/distributed.md for several nodes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import samplegrad as sg
from samplegrad import distributed as sgd
from samplegrad.checkpoint import save_checkpoint

NAME = "distributed_vae"


def make_bars(n: int, side: int = 6, generator: torch.Generator | None = None) -> Tensor:
    """``n`` binary ``side x side`` images of random bars, flattened ``(n, side**2)``."""
    rows = torch.rand(n, side, 1, generator=generator) < 0.25
    cols = torch.rand(n, 1, side, generator=generator) < 0.25
    return (rows | cols).flatten(1).to(torch.get_default_dtype())


class VAE(nn.Module):
    """``x (B, D) -> logits (B, L, K)``; one-hot ``z (..., B, L, K) -> (..., B, D)``."""

    def __init__(self, n_pixels: int, n_latents: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.l, self.k = n_latents, n_classes
        self.enc = nn.Sequential(nn.Linear(n_pixels, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_latents * n_classes))
        self.dec = nn.Sequential(nn.Linear(n_latents * n_classes, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_pixels))

    def logits(self, x: Tensor) -> Tensor:
        return self.enc(x).view(x.shape[0], self.l, self.k)

    def nll(self, x: Tensor, z: Tensor) -> Tensor:
        out = self.dec(z.flatten(-2))
        return F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)


def loss_share(model: VAE, x: Tensor, sl: slice, draw) -> Tensor:
    """Items ``sl`` of the global batch ``x`` ``(B, D)``: their −ELBO summed, divided by B.
    The noise is drawn for all B items (``embed_shard``), so it does not depend on ``sl``."""
    b = x.shape[0]
    logits = model.logits(x[sl])
    z = draw(sgd.embed_shard(logits, sl, b))[sl]
    logq = torch.log_softmax(logits, -1)
    kl = (logq.exp() * (logq + math.log(model.k))).sum((-1, -2))
    return (model.nll(x[sl], z) + kl).sum() / b


def train(args: argparse.Namespace, data: Tensor, distributed: bool) -> tuple[VAE, list]:
    """``args.steps`` Adam steps; ``distributed``: this rank's shard and summed gradients,
    else the whole batch in this process. Same seeds either way."""
    torch.manual_seed(args.seed)  # same initialization and estimator noise on every rank
    model = VAE(data.shape[1], args.n_latents, args.n_classes, args.hidden).to(data.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = torch.Generator(device=data.device).manual_seed(args.seed + 1)
    draw = sg.sampler(args.method)
    losses = []
    for _ in range(args.steps):
        idx = torch.randint(len(data), (args.batch_size,), generator=batches,
                            device=data.device)
        x = data[idx]
        sl = sgd.shard(args.batch_size) if distributed else slice(0, args.batch_size)
        loss = loss_share(model, x, sl, draw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if distributed:
            sgd.all_reduce_grads(model, op="sum")
            loss = sgd.all_reduce(loss.detach().clone())
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="redge", help="a pathwise estimator (sg.sampler)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (all ranks)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-latents", type=int, default=6)
    p.add_argument("--n-classes", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few seconds: 20 small steps")
    p.add_argument("--out", type=Path, default=Path("runs/examples") / NAME,
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.hidden = 20, 32, 32
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_default_dtype(getattr(torch, args.dtype))
    w = sgd.init_from_env()  # a one-process World when not started by torchrun
    if w.is_main:
        print(f"distributed VAE: {w.world_size} process(es), backend {w.backend or 'none'}, "
              f"device {w.device}, {args.steps} steps of a global batch of {args.batch_size}",
              flush=True)
    data = make_bars(2048, generator=torch.Generator().manual_seed(args.seed)).to(w.device)
    t0 = time.perf_counter()
    model, losses = train(args, data, w.distributed)
    seconds = time.perf_counter() - t0
    if w.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(args.out / "model.pt", {"model": model.state_dict()})
    sgd.barrier()  # the checkpoint is on disk before any rank goes on
    if not w.is_main:
        sgd.destroy()
        return
    t1 = time.perf_counter()
    single, single_losses = train(args, data, distributed=False)  # the same steps, alone
    diff = max((p - q).abs().max().item()
               for p, q in zip(model.parameters(), single.parameters()))
    print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f} "
          f"({seconds:.2f}s on {w.world_size} process(es), {time.perf_counter() - t1:.2f}s "
          f"alone)")
    (args.out / "results.json").write_text(json.dumps(
        {"world_size": w.world_size, "backend": w.backend, "losses": losses,
         "single_process_losses": single_losses, "seconds": seconds,
         "max_abs_diff_vs_single_process": diff}, indent=2))
    print(f"outputs in {args.out}/ (model.pt, results.json)")
    print(f"max_abs_diff_vs_single_process={diff:.3e}")
    sgd.destroy()


if __name__ == "__main__":
    main()
