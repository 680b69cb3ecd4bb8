"""Finetune your own image diffusion model (a conv ``nn.Module``) toward a reward.

1. The user's noise model is an ordinary conv ``nn.Module``: ``eps = model(x, t)`` with
   images ``x`` ``(N, 1, 28, 28)`` and integer timesteps ``t`` ``(N,)`` (the contract in
   docs/contracts.md). It is pretrained with ``samplegrad.diffusion.ddpm_loss`` on synthetic
   28x28 images: one bright spot at a random place on a ring.
2. It is then finetuned toward a differentiable reward, ``R(x)`` = total brightness of the
   top-left quadrant (spots pulled toward the top left), with a path-KL pull
   (``kl_weight``) to the pretrained sampler, by the queue of ``samplegrad.implicit.finetune``,
   with any ``torch.optim`` optimizer (here ``--optimizer``, default AdamW)::

       state = finetune.finetune_init(model, sched, cfg, shape=(1, 28, 28),
                                      optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-4))
       state, info = finetune.finetune_step(state, model, sched, reward, cfg)  # repeated

   Each step advances ``T`` populations of images (at the ``T`` stages of the sampler) by
   one sampler step in ONE batched network call, and takes one optimizer step on the model
   -- in place -- from the adjoint gradient of the population that just finished.
   ``--train head`` trains only the output layers (``params=model.head.parameters()``); the
   rest stays frozen.
3. The same number of steps of the unrolled baseline (``unrolled_init`` / ``unrolled_step``:
   a full T-step sampler run with autograd per step) from the same pretrained weights.

The script prints the mean reward of fresh samples (same noise) before and after, for both.

    python examples/finetune_custom_model.py --quick
    python examples/finetune_custom_model.py --steps 200 --kl-weight 0.05 --train head
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
SHAPE = (1, 28, 28)  # the event shape of one sample


class ConvEps(nn.Module):
    """The user's own eps-model on ``(N, 1, 28, 28)`` images: a small conv encoder-decoder
    (28 -> 14 -> 28) whose channels get a per-timestep shift from sinusoidal features."""

    def __init__(self, ch: int = 16, n_freq: int = 8, n_train: int = 1000) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(n_train) * torch.arange(n_freq)
                                                / n_freq))
        self.time = nn.Sequential(nn.Linear(2 * n_freq, ch), nn.SiLU(), nn.Linear(ch, 2 * ch))
        self.down = nn.Conv2d(1, ch, 3, padding=1)
        self.mid = nn.Sequential(nn.Conv2d(ch, ch, 4, stride=2, padding=1), nn.SiLU(),
                                 nn.Conv2d(ch, ch, 3, padding=2, dilation=2), nn.SiLU(),
                                 nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1))
        self.head = nn.Sequential(nn.SiLU(), nn.Conv2d(2 * ch, 1, 3, padding=1))
        nn.init.zeros_(self.head[1].weight)  # start by predicting no noise
        nn.init.zeros_(self.head[1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        s = t.to(x.dtype)[:, None] * self.freqs.to(x.dtype)
        scale, shift = self.time(torch.cat([s.sin(), s.cos()], -1))[:, :, None, None].chunk(2, 1)
        h = nn.functional.silu(self.down(x) * (1 + scale) + shift)
        return self.head(torch.cat([h, self.mid(h)], 1))


def spots(n: int, generator: torch.Generator, radius: float = 8.0,
          width: float = 2.5) -> Tensor:
    """``n`` images ``(n, 1, 28, 28)`` in [-1, 1]: one Gaussian spot at a uniform angle on a
    ring around the center."""
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    cy, cx = 13.5 + radius * angle.sin(), 13.5 + radius * angle.cos()
    grid = torch.arange(28, dtype=torch.float32)
    d2 = (grid[None, :, None] - cy[:, None, None]) ** 2 + (grid[None, None, :]
                                                           - cx[:, None, None]) ** 2
    return (2 * torch.exp(-d2 / (2 * width ** 2)) - 1)[:, None]


def reward(x: Tensor) -> Tensor:
    """Brightness of the top-left quadrant: ``(tanh(2 x) + 1) / 2`` (a smooth pixel value in
    (0, 1), so overshooting [-1, 1] earns nothing) summed over its 14 x 14 pixels;
    ``(N, 1, 28, 28) -> (N,)``, differentiable in ``x``."""
    return ((torch.tanh(2 * x[:, 0, :14, :14]) + 1) / 2).sum((-1, -2))


def pretrain(model: nn.Module, args: argparse.Namespace, alpha_bars: Tensor) -> float:
    """Fit ``model`` to the spot images with the DDPM loss; returns the final smoothed loss."""
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.pretrain_steps)
    ema = float("nan")
    for step in range(1, args.pretrain_steps + 1):
        loss = ddpm_loss(model, spots(32, gen), alpha_bars, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if math.isnan(ema) else 0.95 * ema + 0.05 * loss.item()
        if step % max(1, args.pretrain_steps // 4) == 0:
            print(f"  pretrain step {step:5d}/{args.pretrain_steps}  ddpm loss {ema:.4f}",
                  flush=True)
    return ema


@torch.no_grad()
def evaluate(model: nn.Module, sched: SamplerSchedule, noise: Tensor) -> tuple[float, Tensor]:
    """Mean reward of the images the model's sampler makes from ``noise``, and the images."""
    x = sample(model, noise, sched)
    return float(reward(x).mean()), x


def run(method: str, model: nn.Module, sched: SamplerSchedule, cfg: finetune.FinetuneConfig,
        args: argparse.Namespace) -> list[dict[str, float]]:
    """``args.steps`` finetuning steps of ``method`` ("implicit" queue or "unrolled") on
    ``model`` (trained in place); returns the per-step info dicts."""
    opt_cls = getattr(torch.optim, args.optimizer)
    make_opt: Callable = lambda ps: opt_cls(ps, lr=args.lr)  # noqa: E731 - any torch.optim
    params = model.head.parameters() if args.train == "head" else None  # None: all of them
    if method == "implicit":
        state = finetune.finetune_init(model, sched, cfg, SHAPE, params=params,
                                       optimizer=make_opt)
    else:
        state = finetune.unrolled_init(model, cfg, SHAPE, params=params, optimizer=make_opt)
    log = []
    for i in range(args.steps):
        if method == "implicit":
            state, info = finetune.finetune_step(state, model, sched, reward, cfg)
        else:
            state, info = finetune.unrolled_step(state, model, sched, reward, cfg)
        log.append({k: float(v) for k, v in info.items()})
        if (i + 1) % max(1, args.steps // 4) == 0:
            print(f"  {method:>8s} step {i + 1:4d}/{args.steps}  reward {info['reward']:.4f}  "
                  f"path KL {info['kl']:8.3f}", flush=True)
    return log


def plot(images: dict[str, Tensor], path: Path, n: int = 8) -> bool:
    """A row of ``n`` samples per model (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(images), 1, figsize=(1.2 * n, 1.4 * len(images)))
    for ax, (name, x) in zip(axes, images.items()):
        row = torch.cat(list(((x[:n, 0] + 1) / 2).clamp(0, 1)), dim=1)
        ax.imshow(row, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=100, help="finetuning steps per method")
    p.add_argument("--sampler-steps", type=int, default=20, help="T of the DDPM sampler")
    p.add_argument("--pop-size", type=int, default=16, help="images per finetuning step")
    p.add_argument("--lr", type=float, default=None,
                   help="optimizer learning rate (default 1e-4; 1e-3 with --quick)")
    p.add_argument("--optimizer", default="AdamW", help="a torch.optim class name")
    p.add_argument("--kl-weight", type=float, default=0.2, help="weight of the path KL")
    p.add_argument("--train", choices=("all", "head"), default="all",
                   help="which parameters to finetune (head: the output layers only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="seconds: fewer and smaller steps")
    p.add_argument("--out", type=Path, default=Path("runs/examples") / NAME,
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.steps, args.sampler_steps, args.pop_size = 150, 12, 8, 4
    if args.lr is None:  # a few quick steps need larger ones
        args.lr = 1e-3 if args.quick else 1e-4
    opt = getattr(torch.optim, args.optimizer, None)
    if not (isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer)):
        p.error(f"--optimizer: {args.optimizer!r} is not a torch.optim optimizer")
    for name in ("pretrain_steps", "steps", "sampler_steps", "pop_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error("--lr: must be a finite number > 0")
    if not (math.isfinite(args.kl_weight) and args.kl_weight >= 0):
        p.error("--kl-weight: must be a finite number >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    alpha_bars = linear_alpha_bars(1000)
    sched = sampling_schedule(alpha_bars, n_steps=args.sampler_steps)
    cfg = finetune.FinetuneConfig(pop_size=args.pop_size, kl_weight=args.kl_weight,
                                  seed=args.seed)

    model = ConvEps()
    print(f"1. pretraining the user's conv noise model on {SHAPE} images "
          f"({args.pretrain_steps} steps of ddpm_loss)")
    t0 = time.perf_counter()
    pretrain_loss = pretrain(model, args, alpha_bars)
    pretrain_seconds = time.perf_counter() - t0
    eval_noise = draw_noise(sched, 32, SHAPE, torch.Generator().manual_seed(args.seed + 1))
    before, x_before = evaluate(model, sched, eval_noise)
    print(f"   pretrained sampler ({args.sampler_steps} steps): mean reward {before:.4f}")

    results = {}
    images = {"pretrained": x_before}
    for i, method in enumerate(("implicit", "unrolled")):
        print(f"{i + 2}. finetuning a copy with the {method} "
              f"{'queue' if method == 'implicit' else 'baseline'} ({args.steps} steps, "
              f"{args.optimizer}, train {args.train})")
        m = copy.deepcopy(model)  # both start from the same pretrained weights
        t0 = time.perf_counter()
        log = run(method, m, sched, cfg, args)
        seconds = time.perf_counter() - t0
        after, images[method] = evaluate(m, sched, eval_noise)
        results[method] = {"reward_after": after, "seconds": seconds,
                           "final_kl": log[-1]["kl"], "log": log}

    print(f"\n{'':>10s}  {'reward before':>13s}  {'reward after':>12s}  {'seconds':>7s}")
    for method, r in results.items():
        print(f"{method:>10s}  {before:13.4f}  {r['reward_after']:12.4f}  {r['seconds']:7.1f}")

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
               "shape": list(SHAPE), "pretrain_loss": pretrain_loss,
               "pretrain_seconds": pretrain_seconds, "reward_before": before,
               "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    plotted = plot(images, args.out / "samples.png")
    print(f"\noutputs in {args.out}/ (results.json{', samples.png' if plotted else ''})")


if __name__ == "__main__":
    main()
