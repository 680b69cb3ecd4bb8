"""`samplegrad train-ddpm`: train the small DDPM on the embedded 8x8 digits (or on
Fashion-MNIST 28x28 with ``--dataset fashion``).

Data: ``load_digits("train")`` (1438 images) scaled to [-1, 1]. Model: ``EpsMLP`` noise
predictor on 1000 discrete training timesteps (linear betas 1e-4..0.02); it is sampled with
any T <= 1000 by striding (``samplegrad.diffusion.sampling_schedule``). Adam with a cosine
learning rate, an EMA of the weights (the EMA is what gets saved). Writes the weights to
``CACHE/checkpoints/ddpm_digits.pt`` (``--quick``: ``ddpm_digits_quick.pt``; CACHE is
:func:`samplegrad_bench.paths.cache_dir`; ``--checkpoint FILE`` elsewhere), where
`bench finetune` looks for them, and a summary JSON to ``runs/train-ddpm/`` (``--publish``:
``docs/results/finetune/``). A resumable training checkpoint ``<weights>.ckpt`` is written
every ``--ckpt-every`` steps (the previous one kept as ``.ckpt.prev``) and on Ctrl-C, and picked
up by a rerun with the same settings: a resumed run writes exactly the files an uninterrupted
one writes (the ``seconds`` field aside). ``--fresh`` deletes them and starts over.

``--dataset fashion``: Fashion-MNIST's 60000 training images (``tasks.fashion.load_fashion``,
[-1, 1], ``(N, 1, 28, 28)``) and the conv U-Net :class:`samplegrad.diffusion.EpsUNet`
(:class:`FashionDDPMConfig`; same schedule, optimizer, EMA, checkpoints and resume), weights
``CACHE/checkpoints/ddpm_fashion.pt`` (``--quick``: ``ddpm_fashion_quick.pt``), summary
``train_ddpm_fashion.json`` plus a grid of samples and the loss curve
(``train_ddpm_fashion.png``); `bench finetune-images` loads them. The digits run is unchanged.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from samplegrad import distributed as sgd
from samplegrad.checkpoint import (
    DeferredInterrupt,
    load_checkpoint,
    read_training_state,
    remove_checkpoint,
    restore_training_state,
    save_checkpoint,
    save_training_state,
)
from samplegrad.diffusion import EpsMLP, EpsUNet, ddpm_loss, linear_alpha_bars
from samplegrad_bench._args import MissingInputError, positive_int
from samplegrad_bench._common import progress, pyplot, save_figure, write_json
from samplegrad_bench.data import load_digits
from samplegrad_bench.paths import cache_dir

DATASETS = ("digits", "fashion")


def default_weights(quick: bool = False, dataset: str = "digits") -> Path:
    """Where `train-ddpm` writes and `bench finetune` (`bench finetune-images` for
    ``dataset="fashion"``) looks: the cache's ``checkpoints/ddpm_{dataset}.pt`` (``quick``:
    ``ddpm_{dataset}_quick.pt``)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset: must be one of {DATASETS}, got {dataset!r}")
    return cache_dir("checkpoints") / f"ddpm_{dataset}{'_quick' if quick else ''}.pt"


@dataclass
class DDPMTrainConfig:
    """Settings of one DDPM training run (printed and stored with the weights)."""

    steps: int = 8000
    batch_size: int = 256
    lr: float = 1e-3
    hidden: int = 256
    n_blocks: int = 3
    n_train: int = 1000
    ema_decay: float = 0.999
    seed: int = 0


QUICK = DDPMTrainConfig(steps=1500, hidden=128, n_blocks=2, ema_decay=0.99)


@dataclass
class FashionDDPMConfig:
    """Settings of a Fashion-MNIST DDPM run (:class:`samplegrad.diffusion.EpsUNet`)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    base: int = 8  # U-Net width of the first level
    mults: tuple[int, ...] = (1, 2, 2)  # 28 -> 14 -> 7
    groups: int = 4  # GroupNorm groups
    n_train: int = 1000
    ema_decay: float = 0.995
    n_data: int | None = None  # the first n_data training images (None: all 60000)
    seed: int = 0
    dataset: str = "fashion"

    def __post_init__(self) -> None:
        self.mults = tuple(self.mults)  # a list after a JSON/asdict round trip


FASHION_QUICK = FashionDDPMConfig(steps=30, batch_size=16, base=4, mults=(1, 2), groups=2,
                                  n_train=100, ema_decay=0.9, n_data=256)


def build_model(cfg: DDPMTrainConfig | FashionDDPMConfig) -> torch.nn.Module:
    if isinstance(cfg, FashionDDPMConfig):
        return EpsUNet(channels=1, base=cfg.base, mults=cfg.mults, groups=cfg.groups)
    return EpsMLP(dim=64, hidden=cfg.hidden, n_blocks=cfg.n_blocks)


def _training_data(cfg: DDPMTrainConfig | FashionDDPMConfig) -> torch.Tensor:
    if isinstance(cfg, FashionDDPMConfig):
        from samplegrad_bench.tasks.fashion import load_fashion

        try:
            return load_fashion("train", cfg.n_data)[0]
        except FileNotFoundError as e:
            raise MissingInputError(str(e)) from None
    return load_digits("train")[0] * 2.0 - 1.0


def _config_of(blob_config: dict) -> DDPMTrainConfig | FashionDDPMConfig:
    if blob_config.get("dataset") == "fashion":
        return FashionDDPMConfig(**blob_config)
    return DDPMTrainConfig(**blob_config)


def train_ddpm(cfg: DDPMTrainConfig | FashionDDPMConfig, weights: Path | None = None, *,
               ckpt_every: int = 500, verbose: bool = True, fresh: bool = False) -> dict:
    """Train (or resume) and write ``weights`` (default :func:`default_weights`); returns a
    summary dict.

    The resumable checkpoint ``<weights>.ckpt`` (and ``.ckpt.prev``, the one before) holds
    the model, its EMA, Adam, the LR schedule, the minibatch/noise generator, the global RNG
    streams, the step, the logged losses and the smoothed loss, so a resumed run writes
    exactly what an uninterrupted one writes. Ctrl-C saves a checkpoint of the last finished
    step before stopping. ``fresh``: delete existing checkpoints first.

    Under ``torchrun`` (data parallel, :mod:`samplegrad.distributed`): every rank draws the
    same global minibatch, timesteps and noise, runs its shard of the items, and the
    gradients are summed; rank 0 writes the checkpoints and the weights, the others wait.
    """
    if cfg.steps < 1:
        raise ValueError(f"cfg.steps must be >= 1, got {cfg.steps}")
    dataset = getattr(cfg, "dataset", "digits")
    weights = default_weights(dataset=dataset) if weights is None else Path(weights)
    ckpt = weights.with_name(weights.name + ".ckpt")
    w = sgd.init_from_env(backend="gloo")  # this trainer runs on the CPU
    verbose = verbose and w.is_main
    if fresh and w.is_main:
        remove_checkpoint(ckpt)
    sgd.barrier()
    torch.manual_seed(cfg.seed)
    x = _training_data(cfg)
    alpha_bars = linear_alpha_bars(cfg.n_train)
    model = build_model(cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    stateful = {"model": model, "ema": ema, "opt": opt, "sched": sched, "gen": gen}
    start, losses, running, prior_seconds = 0, [], float("nan"), 0.0
    saved = read_training_state(ckpt, list(stateful))  # damaged: .prev, or CheckpointError
    if saved is not None:
        if saved["extra"].get("config") == _plain(asdict(cfg)):
            got = restore_training_state(saved, stateful)
            start, losses, running = got["step"], list(got["losses"]), got["running"]
            prior_seconds = got["seconds"]
            if verbose:
                print(f"train-ddpm: resuming from {ckpt} at step {start}")
        elif verbose:
            print(f"train-ddpm: {ckpt} has other settings; starting over "
                  "(it is kept as .ckpt.prev until the next checkpoint)")

    t0 = time.perf_counter()

    def checkpoint(step: int) -> None:
        if w.is_main:  # rank 0 writes (atomically); the others wait
            save_training_state(ckpt, stateful, step=step, config=_plain(asdict(cfg)),
                                losses=losses,
                                running=running,
                                seconds=prior_seconds + time.perf_counter() - t0)
        sgd.barrier()

    bar = progress(range(start, cfg.steps), desc="train-ddpm", total=cfg.steps, initial=start)
    with DeferredInterrupt() as stop:
        for step in bar:
            idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
            loss = ddpm_loss(model, x[idx], alpha_bars, gen,
                             shard=sgd.shard(cfg.batch_size) if w.distributed else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if w.distributed:
                sgd.all_reduce_grads(model, op="sum")
                loss = sgd.all_reduce(loss.detach().clone())
            opt.step()
            sched.step()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(p, 1.0 - cfg.ema_decay)
            running = loss.item() if running != running else 0.98 * running + 0.02 * loss.item()
            if step % 100 == 0:
                losses.append((step, running))
                bar.set_postfix(loss=f"{running:.4f}")
            if w.distributed:  # every rank stops (and saves) at the same step
                flag = torch.tensor([float(stop.requested)])
                stop.requested = bool(sgd.all_reduce(flag, "max")[0])
            if stop.requested or (step + 1 < cfg.steps and (step + 1) % ckpt_every == 0):
                checkpoint(step + 1)
            stop.raise_if_requested()
    seconds = prior_seconds + time.perf_counter() - t0
    if w.is_main:
        save_checkpoint(weights, {"config": _plain(asdict(cfg)), "state_dict": ema.state_dict(),
                                  "losses": losses}, keep_previous=False)
        remove_checkpoint(ckpt)
    sgd.barrier()
    summary = {"config": asdict(cfg), "weights": str(weights), "seconds": seconds,
               "final_loss_ema": running, "losses": losses}
    if verbose:
        print(f"train-ddpm: {cfg} -> {weights} ({seconds:.0f}s in all, "
              f"smoothed loss {running:.4f})")
    return summary


def _plain(d: dict) -> dict:
    """Tuples as lists, so that a config compares equal after a save/load round trip."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_ddpm(weights: Path | None = None
              ) -> tuple[torch.nn.Module, torch.Tensor, DDPMTrainConfig | FashionDDPMConfig]:
    """Load saved weights (default :func:`default_weights`): ``(model in eval mode,
    alpha_bars (n_train,), config)``; the config's type (digits or Fashion-MNIST) follows the
    file."""
    weights = default_weights() if weights is None else Path(weights)
    blob = load_checkpoint(weights, check=lambda b: (b["config"], b["state_dict"]))
    if blob is None:
        raise FileNotFoundError(f"weights: no DDPM weights at {weights}")
    cfg = _config_of(blob["config"])
    model = build_model(cfg)
    model.load_state_dict(blob["state_dict"])
    model.eval().requires_grad_(False)
    return model, linear_alpha_bars(cfg.n_train), cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits: the MLP on 8x8 digits (default); fashion: the conv U-Net on "
                        "Fashion-MNIST 28x28 (weights for `bench finetune-images`)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default 8000, fashion 1500; quick 1500, fashion 30)")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                   help="where to write the weights (default: the cache's "
                        "checkpoints/ddpm_digits.pt, quick: ddpm_digits_quick.pt)")
    p.add_argument("--ckpt-every", type=positive_int, default=500,
                   help="steps between resumable training checkpoints (WEIGHTS.ckpt; the one "
                        "before is kept as WEIGHTS.ckpt.prev); a rerun resumes from them")
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete this run's resumable checkpoints first")


def run(args: argparse.Namespace) -> dict:
    dataset = getattr(args, "dataset", "digits")
    if dataset == "fashion":
        base = FASHION_QUICK if args.quick else FashionDDPMConfig()
        cls = FashionDDPMConfig
    else:
        base = QUICK if args.quick else DDPMTrainConfig()
        cls = DDPMTrainConfig
    cfg = cls(**{**asdict(base), "seed": args.seed,
                 **({"steps": args.steps} if args.steps else {})})
    weights = args.checkpoint or default_weights(args.quick, dataset)
    summary = train_ddpm(cfg, weights, ckpt_every=args.ckpt_every, fresh=args.fresh)
    tag = "_fashion" if dataset == "fashion" else ""
    name = f"train_ddpm{tag}{'_quick' if args.quick else ''}"
    write_json(Path(args.out) / f"{name}.json", summary)
    if dataset == "fashion":
        save_fashion_figure(Path(args.out) / f"{name}.png", summary, weights,
                            n_steps=20 if args.quick else 100)
    return summary


@torch.no_grad()
def save_fashion_figure(path: Path, summary: dict, weights: Path, n: int = 64,
                        n_steps: int = 100) -> None:
    """The loss curve and a grid of ``n`` samples (``n_steps``-step ancestral sampler, seed 0)
    of the Fashion-MNIST DDPM at ``weights``."""
    plt = pyplot()

    from samplegrad.diffusion import draw_noise, sample, sampling_schedule

    model, alpha_bars, _ = load_ddpm(weights)
    sched = sampling_schedule(alpha_bars, min(n_steps, len(alpha_bars)))
    x = sample(model, draw_noise(sched, n, (1, 28, 28),
                                 torch.Generator(device="cpu").manual_seed(0)), sched)
    grid = image_grid(x)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    steps, losses = zip(*summary["losses"]) if summary["losses"] else ((), ())
    axes[0].plot(steps, losses)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("noise-prediction loss (smoothed)")
    axes[0].set_yscale("log")
    axes[1].imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"{n} samples, T={sched.n_steps}", fontsize=9)
    axes[1].axis("off")
    save_figure(fig, path)


def image_grid(x: torch.Tensor, cols: int = 8) -> torch.Tensor:
    """Images ``(n, 1, H, W)`` in [-1, 1] -> one ``(rows*(H+1)-1, cols*(W+1)-1)`` picture in
    [0, 1] with 1-px grey gaps (the first ``cols * (n // cols)`` images)."""
    h, w = x.shape[-2:]
    n = max(cols, (x.shape[0] // cols) * cols)
    img = ((x[:n].reshape(-1, h, w).clamp(-1, 1) + 1) / 2).cpu()
    if img.shape[0] < n:
        img = torch.cat([img, img.new_full((n - img.shape[0], h, w), 0.5)])
    img = torch.nn.functional.pad(img, (0, 1, 0, 1), value=0.5)
    img = img.reshape(n // cols, cols, h + 1, w + 1).permute(0, 2, 1, 3)
    return img.reshape(n // cols * (h + 1), cols * (w + 1))[:-1, :-1]
