"""Finetune your own diffusion noise model toward a reward with Implicit Diffusion.

1. The user defines an ordinary ``nn.Module`` noise model, ``model(x (N, d), t (N,) long) ->
   eps (N, d)`` (here a small MLP with its own time features), and pretrains it with
   ``samplegrad.diffusion.ddpm_loss`` on synthetic 2-D data: 4 Gaussian blobs on a circle.
2. It is then finetuned toward a reward ``R(x) = -||x - target||^2`` (mass pulled toward
   the blob at ``target``), regularized by ``kl_weight`` times the path KL to the
   pretrained sampler, with the queue of ``samplegrad.implicit.finetune``:

       state = finetune.finetune_init(model, sched, cfg, dim=2)
       state, info = finetune.finetune_step(state, model, sched, reward, cfg)  # repeated

   Each step advances ``T`` populations of samples (at the ``T`` stages of the sampler) by
   one sampler step in ONE batched network call, and takes one ``torch.optim`` step on the
   model -- in place -- from the adjoint gradient of the population that just finished.
3. The same number of steps of the unrolled baseline (``unrolled_init`` / ``unrolled_step``:
   a full T-step sampler run with autograd per step) from the same pretrained weights.

The script prints the mean reward of fresh samples before and after, for both.

    python examples/finetune_custom_model.py --quick
    python examples/finetune_custom_model.py --steps 400 --kl-weight 0.05
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from samplegrad.diffusion import (
    SamplerSchedule,
    ddpm_loss,
    draw_noise,
    linear_alpha_bars,
    sample,
    sampling_schedule,
)
from samplegrad.implicit import finetune

NAME = "finetune_custom_model"


class MyNoiseModel(nn.Module):
    """The user's own eps-model: ``x (N, d)``, integer timesteps ``t (N,)`` -> ``(N, d)``.

    A residual MLP; the timestep enters every block through sinusoidal features.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, n_blocks: int = 2,
                 n_freq: int = 16, n_train: int = 1000) -> None:
        super().__init__()
        self.n_train = n_train
        self.register_buffer("freqs", torch.exp(-math.log(n_train) * torch.arange(n_freq)
                                                / n_freq))
        self.time = nn.Sequential(nn.Linear(2 * n_freq, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.t_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)  # start by predicting no noise: trains much faster
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        s = t.to(x.dtype)[:, None] * self.freqs
        emb = self.time(torch.cat([s.sin(), s.cos()], -1))
        h = self.inp(x)
        for proj, lin in zip(self.t_proj, self.blocks):
            h = h + lin(nn.functional.silu(h + proj(emb)))
        return self.out(nn.functional.silu(h))


def blobs(n: int, generator: torch.Generator, k: int = 4, radius: float = 0.7,
          std: float = 0.1) -> Tensor:
    """``n`` points from ``k`` Gaussian blobs evenly spaced on a circle (the first at 45
    degrees): ``(n, 2)``."""
    angle = (torch.randint(k, (n,), generator=generator) + 0.5) * (2 * math.pi / k)
    centers = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return centers + std * torch.randn(n, 2, generator=generator)


def make_reward(target: Tensor) -> Callable[[Tensor], Tensor]:
    """``R(x) = -||x - target||^2``: ``(N, 2) -> (N,)``, differentiable in ``x``."""
    def reward(x: Tensor) -> Tensor:
        return -(x - target).pow(2).sum(-1)
    return reward


def pretrain(model: nn.Module, args: argparse.Namespace, alpha_bars: Tensor) -> float:
    """Fit ``model`` to the blobs with the DDPM loss; returns the final (smoothed) loss."""
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.pretrain_steps)
    ema = float("nan")
    for step in range(1, args.pretrain_steps + 1):
        loss = ddpm_loss(model, blobs(256, gen), alpha_bars, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        ema = value if math.isnan(ema) else 0.98 * ema + 0.02 * value
        if step % max(1, args.pretrain_steps // 4) == 0:
            print(f"  pretrain step {step:5d}/{args.pretrain_steps}  ddpm loss {ema:.4f}",
                  flush=True)
    return ema


@torch.no_grad()
def evaluate(model: nn.Module, sched: SamplerSchedule, reward: Callable[[Tensor], Tensor],
             noise: Tensor) -> tuple[float, Tensor]:
    """Mean reward of the samples the model's sampler makes from ``noise``, and the samples."""
    x = sample(model, noise, sched)
    return float(reward(x).mean()), x


def run(method: str, model: nn.Module, sched: SamplerSchedule,
        reward: Callable[[Tensor], Tensor], cfg: finetune.FinetuneConfig,
        steps: int) -> list[dict[str, float]]:
    """``steps`` finetuning steps of ``method`` ("implicit" queue or "unrolled") on ``model``
    (trained in place); returns the per-step info dicts."""
    if method == "implicit":
        state = finetune.finetune_init(model, sched, cfg, dim=2)
    else:
        state = finetune.unrolled_init(model, cfg)
    log = []
    for i in range(steps):
        if method == "implicit":
            state, info = finetune.finetune_step(state, model, sched, reward, cfg)
        else:
            state, info = finetune.unrolled_step(state, model, sched, reward, cfg, dim=2)
        log.append({k: float(v) for k, v in info.items()})
        if (i + 1) % max(1, steps // 4) == 0:
            print(f"  {method:>8s} step {i + 1:4d}/{steps}  reward {info['reward']:8.4f}  "
                  f"path KL {info['kl']:7.3f}", flush=True)
    return log


def plot(samples: dict[str, Tensor], target: Tensor, path: Path) -> bool:
    """Samples of each model (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(samples), figsize=(3.3 * len(samples), 3.4),
                             sharex=True, sharey=True)
    for ax, (name, x) in zip(axes, samples.items()):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
        ax.scatter(*target.tolist(), marker="*", s=120, color="C3")
        ax.set_title(name)
        ax.set_aspect("equal")
    axes[0].set_xlim(-1.1, 1.1)
    axes[0].set_ylim(-1.1, 1.1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--steps", type=int, default=200, help="finetuning steps per method")
    p.add_argument("--sampler-steps", type=int, default=20, help="T of the DDPM sampler")
    p.add_argument("--pop-size", type=int, default=64, help="samples per finetuning step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="Adam", help="a torch.optim class name")
    p.add_argument("--kl-weight", type=float, default=0.02)
    p.add_argument("--target", default="0.5,0.5", help="comma-separated 2-D target point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few seconds: fewer steps")
    p.add_argument("--out", type=Path, default=Path("runs/examples") / NAME,
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.steps = 800, 40
    try:
        args.target = [float(v) for v in args.target.split(",")]
    except ValueError:
        p.error(f"--target: expected two comma-separated numbers, got {args.target!r}")
    if len(args.target) != 2:
        p.error(f"--target: expected two numbers, got {len(args.target)}")
    for name in ("pretrain_steps", "steps", "sampler_steps", "pop_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    alpha_bars = linear_alpha_bars(1000)
    sched = sampling_schedule(alpha_bars, n_steps=args.sampler_steps)
    target = torch.tensor(args.target)
    reward = make_reward(target)
    cfg = finetune.FinetuneConfig(pop_size=args.pop_size, lr=args.lr, optimizer=args.optimizer,
                                  kl_weight=args.kl_weight, seed=args.seed)

    model = MyNoiseModel()
    print(f"1. pretraining the user's noise model ({args.pretrain_steps} steps of ddpm_loss)")
    t0 = time.perf_counter()
    pretrain_loss = pretrain(model, args, alpha_bars)
    pretrain_seconds = time.perf_counter() - t0
    eval_noise = draw_noise(sched, 2000, 2, torch.Generator().manual_seed(args.seed + 1))
    before, x_before = evaluate(model, sched, reward, eval_noise)
    print(f"   pretrained sampler ({args.sampler_steps} steps): mean reward {before:.4f}")

    results = {}
    samples = {"pretrained": x_before}
    for i, method in enumerate(("implicit", "unrolled")):
        print(f"{i + 2}. finetuning a copy with the {method} "
              f"{'queue' if method == 'implicit' else 'baseline'} ({args.steps} steps)")
        m = copy.deepcopy(model)  # both start from the same pretrained weights
        t0 = time.perf_counter()
        log = run(method, m, sched, reward, cfg, args.steps)
        seconds = time.perf_counter() - t0
        after, samples[method] = evaluate(m, sched, reward, eval_noise)
        results[method] = {"reward_after": after, "seconds": seconds,
                           "final_kl": log[-1]["kl"], "log": log}

    print(f"\n{'':>10s}  {'reward before':>13s}  {'reward after':>12s}  {'seconds':>7s}")
    for method, r in results.items():
        print(f"{method:>10s}  {before:13.4f}  {r['reward_after']:12.4f}  {r['seconds']:7.1f}")

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
               "pretrain_loss": pretrain_loss, "pretrain_seconds": pretrain_seconds,
               "reward_before": before, "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    plotted = plot(samples, target, args.out / "samples.png")
    print(f"\noutputs in {args.out}/ (results.json{', samples.png' if plotted else ''})")


if __name__ == "__main__":
    main()
