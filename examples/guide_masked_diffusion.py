"""Reward guidance of your own masked-diffusion model, with two gradient estimators.

1. A tiny masked (absorbing-state) diffusion model -- ``samplegrad.discrete.Denoiser``
   built from an ``MDMConfig`` -- is trained here, with the ``train_init`` / ``train_step``
   loop, on synthetic token sequences with a simple structure: ``seq_len`` tokens from a
   vocabulary of ``vocab_size``, sorted (non-decreasing). Samples of the trained model are
   mostly sorted too ("valid"). The trained model is saved as ``OUT/mdm.pt``
   (``discrete.save_train_state``); ``--checkpoint PATH`` loads one instead of training
   (``discrete.load_model``).
2. Its sampler is then guided toward a reward, the number of positions holding the token
   ``--token`` (default: the largest one), without retraining: at every unmasking step
   ``discrete.make_guide(objective, GuidanceConfig(method=...))`` optimizes the logits of
   the masked positions for ``E[reward] - kl_weight * KL(q || p)``, the gradient of the
   expectation coming from a categorical estimator (any name in ``samplegrad.methods()``
   but ``exact``; by default ``redge``, pathwise, and ``rloo``, score function).

The script prints, unguided vs guided: the mean reward, the fraction of valid (sorted)
sequences, and the guided sampler's path KL to the unguided one.

    python examples/guide_masked_diffusion.py --quick
    python examples/guide_masked_diffusion.py --methods redge,gumbel_hard,rloo --kl-weight 0.3
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

import samplegrad as sg
from samplegrad import discrete

NAME = "guide_masked_diffusion"


def sorted_sequences(n: int, vocab_size: int, seq_len: int,
                     generator: torch.Generator) -> Tensor:
    """``n`` non-decreasing token sequences ``(n, seq_len)`` (uniform tokens, sorted)."""
    return torch.randint(vocab_size, (n, seq_len), generator=generator).sort(-1).values


def is_valid(x: Tensor) -> Tensor:
    """Whether each sequence ``(B, L)`` is non-decreasing: ``(B,)`` bool."""
    return (x.diff(dim=-1) >= 0).all(-1)


def make_objective(token: int) -> Callable[[Tensor], Tensor]:
    """The guidance objective: one-hot (or relaxed) sequences ``(S, B, L, V)`` -> the loss
    to minimize ``(S, B)``, minus the number of positions holding ``token``."""
    def objective(y: Tensor) -> Tensor:
        return -y[..., token].sum(-1)
    return objective


def train(args: argparse.Namespace, data: Tensor) -> discrete.MDMTrainState:
    """Train the denoiser with the library's init/step loop (prints the loss now and then)."""
    mcfg = discrete.MDMConfig(vocab_size=args.vocab_size, seq_len=args.seq_len,
                              width=args.width, depth=2, heads=2)
    tcfg = discrete.MDMTrainConfig(steps=args.train_steps, batch_size=64, lr=3e-3,
                                   warmup=min(50, args.train_steps // 10))
    state = discrete.train_init(mcfg, tcfg, seed=args.seed)
    recent: list[float] = []
    for i in range(args.train_steps):
        state, info = discrete.train_step(state, data, tcfg)
        recent = (recent + [info["loss"]])[-50:]
        if (i + 1) % max(1, args.train_steps // 4) == 0:
            print(f"  train step {i + 1:5d}/{args.train_steps}  loss "
                  f"{sum(recent) / len(recent):.4f}  lr {info['lr']:.2e}", flush=True)
    discrete.save_train_state(args.out / "mdm.pt", state, tcfg)
    return state


def evaluate(x: Tensor, token: int) -> dict[str, float]:
    return {"reward": float((x == token).float().sum(-1).mean()),
            "valid": float(is_valid(x).float().mean())}


def plot(rows: dict[str, dict[str, float]], path: Path) -> bool:
    """Bar charts of reward and validity per sampler (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8, 3.2))
    names = list(rows)
    ax0.bar(names, [rows[n]["reward"] for n in names], color="C0")
    ax0.set_ylabel("mean reward (count of token)")
    ax1.bar(names, [rows[n]["valid"] for n in names], color="C2")
    ax1.set_ylabel("fraction valid (sorted)")
    ax1.set_ylim(0, 1)
    for ax in (ax0, ax1):
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="redge,rloo",
                   help="comma-separated estimator names for the guidance")
    p.add_argument("--vocab-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=8)
    p.add_argument("--width", type=int, default=64, help="transformer width")
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="load this model (an mdm.pt saved by this example or by "
                        "discrete.save_train_state) instead of training one")
    p.add_argument("--token", type=int, default=None,
                   help="the rewarded token (default: vocab_size - 1)")
    p.add_argument("--kl-weight", type=float, default=1.0,
                   help="guidance KL weight (larger: closer to the unguided model)")
    p.add_argument("--sampler-steps", type=int, default=8, help="unmasking steps")
    p.add_argument("--n-samples", type=int, default=256, help="sequences per sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few seconds: smaller everything")
    p.add_argument("--out", type=Path, default=Path("runs/examples") / NAME,
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = [m for m in sg.methods() if m != "exact"]
    bad = [m for m in args.methods if m not in known]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad or 'empty list'}; choose from {','.join(known)}")
    if args.quick:
        args.train_steps, args.width, args.n_samples = 300, 32, 64
    for name in ("vocab_size", "seq_len", "width", "train_steps", "sampler_steps",
                 "n_samples"):
        if getattr(args, name) < (2 if name in ("vocab_size", "seq_len") else 1):
            p.error(f"--{name.replace('_', '-')}: too small")
    if args.width % 2:
        p.error("--width: must be even (2 attention heads)")
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            p.error(f"--checkpoint: no file at {args.checkpoint} (run this example without "
                    "--checkpoint once to create OUT/mdm.pt)")
        args.model = discrete.load_model(args.checkpoint)
        args.vocab_size = args.model.config.vocab_size
        args.seq_len = args.model.config.seq_len
    args.token = args.vocab_size - 1 if args.token is None else args.token
    if not 0 <= args.token < args.vocab_size:
        p.error(f"--token: must be in 0..{args.vocab_size - 1}, got {args.token}")
    if not args.kl_weight >= 0:
        p.error("--kl-weight: must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    data = sorted_sequences(4096, args.vocab_size, args.seq_len, gen)
    t0 = time.perf_counter()
    if args.checkpoint is not None:
        print(f"1. loaded the masked-diffusion model {args.checkpoint} "
              f"(vocab {args.vocab_size}, length {args.seq_len})")
        model = args.model
    else:
        print(f"1. training a masked-diffusion model on sorted sequences "
              f"(vocab {args.vocab_size}, length {args.seq_len}, {args.train_steps} steps)")
        model = train(args, data).model
    train_seconds = time.perf_counter() - t0

    print(f"2. sampling {args.n_samples} sequences in {args.sampler_steps} steps, "
          f"reward = count of token {args.token}")
    data_row = evaluate(data, args.token)
    rows: dict[str, dict[str, float]] = {}
    x = discrete.sample(model, args.sampler_steps, batch_size=args.n_samples,
                        generator=torch.Generator().manual_seed(args.seed + 1))
    rows["unguided"] = {**evaluate(x, args.token), "path_kl": 0.0, "seconds": 0.0}
    objective = make_objective(args.token)
    for method in args.methods:
        cfg = discrete.GuidanceConfig(method=method, kl_weight=args.kl_weight)
        t0 = time.perf_counter()
        xg, kl = discrete.sample(model, args.sampler_steps, batch_size=args.n_samples,
                                 generator=torch.Generator().manual_seed(args.seed + 1),
                                 guide=discrete.make_guide(objective, cfg), return_kl=True)
        rows[f"guided {method}"] = {**evaluate(xg, args.token), "path_kl": float(kl.mean()),
                                    "seconds": time.perf_counter() - t0}
        print(f"  guided with {method}: {rows[f'guided {method}']['seconds']:.1f} s",
              flush=True)

    print(f"\n{'sampler':>22s}  {'reward':>6s}  {'valid':>5s}  {'path KL':>7s}")
    print(f"{'(training data)':>22s}  {data_row['reward']:6.3f}  {data_row['valid']:5.2f}")
    for name, r in rows.items():
        print(f"{name:>22s}  {r['reward']:6.3f}  {r['valid']:5.2f}  {r['path_kl']:7.3f}")

    summary = {"config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items() if k != "model"},
               "train_seconds": train_seconds, "data": data_row, "samplers": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    written = ["results.json"] + (["mdm.pt"] if args.checkpoint is None else [])
    if plot(rows, args.out / "guidance.png"):
        written.append("guidance.png")
    print(f"\noutputs in {args.out}/ ({', '.join(written)})")


if __name__ == "__main__":
    main()
