"""Swap categorical gradient estimators inside your own VAE training loop.

A small VAE with categorical latents (``n_latents`` variables of ``n_classes`` classes
each) is trained on synthetic 6x6 binary "bars" images (random horizontal and vertical
bars, a few flipped pixels). The model is an ordinary ``nn.Module`` written here; the
only samplegrad-specific line is how the discrete latent is drawn:

* a **pathwise** estimator (``redge``, ``gumbel_hard``, ``reinmax``, ``straight_through``,
  ...) is a drop-in sampler, ``draw = sg.sampler(name)``, called inside the encoder's
  forward pass: ``z = draw(logits)`` is one-hot valued and carries the estimator's
  gradient, so the usual ``loss.backward()`` trains encoder and decoder;
* a **score-function** estimator (``rloo``, ``reinforce``) needs the objective itself:
  ``sg.surrogate(f, logits, method=name, n_samples=S)`` returns a loss whose backward
  gives the estimator's gradient to the encoder and the ordinary gradient to the decoder.

Every method trains the same architecture from the same initialization on the same
minibatches; the script prints a table of the final negative ELBO (nats per image, on
held-out images, lower is better).

    python examples/categorical_vae.py --quick
    python examples/categorical_vae.py --methods redge,gumbel_hard,reinmax,rloo --steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import samplegrad as sg
from samplegrad.categorical import get_method

NAME = "categorical_vae"


def make_bars(n: int, side: int = 6, p_bar: float = 0.25, flip: float = 0.03,
              generator: torch.Generator | None = None) -> Tensor:
    """``n`` binary ``side x side`` images, flattened ``(n, side**2)``: each row and each
    column is a bar with probability ``p_bar``; then every pixel flips with prob. ``flip``."""
    rows = torch.rand(n, side, 1, generator=generator) < p_bar
    cols = torch.rand(n, 1, side, generator=generator) < p_bar
    img = (rows | cols).float().flatten(1)
    noise = torch.rand(img.shape, generator=generator) < flip
    return torch.where(noise, 1.0 - img, img)


class CategoricalVAE(nn.Module):
    """Encoder ``x (B, D) -> logits (B, L, K)``; decoder ``one-hot z (..., B, L, K) ->
    Bernoulli logits (..., B, D)``; uniform prior over the ``K**L`` latent codes."""

    def __init__(self, n_pixels: int, n_latents: int = 6, n_classes: int = 4,
                 hidden: int = 128) -> None:
        super().__init__()
        self.n_latents, self.n_classes = n_latents, n_classes
        self.encoder = nn.Sequential(nn.Linear(n_pixels, hidden), nn.ReLU(),
                                     nn.Linear(hidden, n_latents * n_classes))
        self.decoder = nn.Sequential(nn.Linear(n_latents * n_classes, hidden), nn.ReLU(),
                                     nn.Linear(hidden, n_pixels))

    def logits(self, x: Tensor) -> Tensor:
        """``(B, D) -> (B, L, K)``."""
        return self.encoder(x).view(x.shape[0], self.n_latents, self.n_classes)

    def reconstruction_nll(self, x: Tensor, z: Tensor) -> Tensor:
        """``-log p(x | z)`` per image: ``z (..., B, L, K)`` -> ``(..., B)``."""
        out = self.decoder(z.flatten(-2))
        return F.binary_cross_entropy_with_logits(out, x.expand_as(out),
                                                  reduction="none").sum(-1)

    def kl_to_prior(self, logits: Tensor) -> Tensor:
        """``KL(q(z | x) || uniform)`` per image: ``(B, L, K) -> (B,)``."""
        logq = torch.log_softmax(logits, -1)
        return (logq.exp() * (logq + math.log(self.n_classes))).sum((-1, -2))

    def forward(self, x: Tensor, draw: Callable[[Tensor], Tensor]) -> Tensor:
        """Negative ELBO per image ``(B,)`` with a pathwise sampler ``draw`` in the encoder."""
        logits = self.logits(x)
        return self.reconstruction_nll(x, draw(logits)) + self.kl_to_prior(logits)


def training_loss(model: CategoricalVAE, x: Tensor, method: str, n_samples: int) -> Tensor:
    """The minibatch's mean negative ELBO, differentiable through estimator ``method``."""
    if get_method(method).kind == "pathwise":
        draw = sg.sampler(method)
        return model(x, draw).mean()
    logits = model.logits(x)
    # f: one-hot samples (S, B, L, K) -> per-image values (S, B); the surrogate sums them
    rec = sg.surrogate(lambda z: model.reconstruction_nll(x, z), logits, method=method,
                       n_samples=n_samples)
    return (rec + model.kl_to_prior(logits).sum()) / x.shape[0]


@torch.no_grad()
def negative_elbo(model: CategoricalVAE, x: Tensor, n_samples: int = 64,
                  generator: torch.Generator | None = None) -> float:
    """Monte Carlo negative ELBO (exact categorical draws), nats per image."""
    logits = model.logits(x)
    probs = torch.softmax(logits, -1)
    idx = torch.multinomial(probs.reshape(-1, model.n_classes), n_samples, replacement=True,
                            generator=generator)                     # (B*L, S)
    z = F.one_hot(idx.T.reshape(n_samples, *logits.shape[:-1]), model.n_classes).float()
    return float((model.reconstruction_nll(x, z).mean(0) + model.kl_to_prior(logits)).mean())


def train(method: str, data: Tensor, test: Tensor, args: argparse.Namespace
          ) -> dict[str, float | list]:
    """Train one VAE with estimator ``method``; returns its curve and final test -ELBO."""
    torch.manual_seed(args.seed)  # same initialization for every method
    model = CategoricalVAE(data.shape[1], args.n_latents, args.n_classes, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed)  # same minibatches for every method
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x = data[torch.randint(len(data), (args.batch_size,), generator=batches)]
        loss = training_loss(model, x, method, args.n_samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            value = negative_elbo(model, test, generator=torch.Generator().manual_seed(1))
            curve.append((step, value))
            print(f"  {method:>16s} step {step:5d}/{args.steps}  test -ELBO {value:7.3f}",
                  flush=True)
    return {"final": curve[-1][1], "curve": curve, "seconds": time.perf_counter() - t0}


def plot(results: dict[str, dict], path: Path) -> bool:
    """Test -ELBO curves, one per method (skipped if matplotlib is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, r in results.items():
        steps, values = zip(*r["curve"])
        ax.plot(steps, values, marker="o", ms=3, label=name)
    ax.set(xlabel="training step", ylabel="test negative ELBO (nats)",
           title="categorical VAE on synthetic bars")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="redge,gumbel_hard,reinmax,rloo",
                   help="comma-separated estimator names (see samplegrad.methods())")
    p.add_argument("--steps", type=int, default=2000, help="training steps per method")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-latents", type=int, default=6)
    p.add_argument("--n-classes", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--n-samples", type=int, default=4,
                   help="samples per image for score-function methods")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few seconds: fewer, smaller steps")
    p.add_argument("--out", type=Path, default=Path("runs/examples") / NAME,
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = [m for m in sg.methods() if m != "exact"]
    bad = [m for m in args.methods if m not in known]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad or 'empty list'}; choose from {','.join(known)}")
    if args.quick:
        args.steps, args.eval_every, args.hidden = 400, 100, 64
    for name in ("steps", "batch_size", "eval_every", "hidden", "n_latents"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.n_classes < 2 or args.n_samples < 2:
        p.error("--n-classes and --n-samples must be >= 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    data, test = make_bars(4096, generator=gen), make_bars(512, generator=gen)
    print(f"categorical VAE: {args.n_latents} latents x {args.n_classes} classes, "
          f"{data.shape[1]} pixels, {args.steps} steps, methods {','.join(args.methods)}")
    results = {m: train(m, data, test, args) for m in args.methods}

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"\n{'method':>16s}  {'kind':>8s}  {'test -ELBO':>10s}  {'seconds':>7s}")
    for m, r in sorted(results.items(), key=lambda kv: kv[1]["final"]):
        print(f"{m:>16s}  {get_method(m).kind:>8s}  {r['final']:10.3f}  {r['seconds']:7.1f}")
    (args.out / "results.json").write_text(json.dumps(
        {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "results": results}, indent=2))
    plotted = plot(results, args.out / "elbo.png")
    print(f"\noutputs in {args.out}/ (results.json{', elbo.png' if plotted else ''})")


if __name__ == "__main__":
    main()
