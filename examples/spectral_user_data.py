"""Fit an optimization-free spectral score model to your own array and sample from it.

``samplegrad.spectral.fit(data)`` takes any float tensor ``(N, d)`` and fits the score of
the Ornstein-Uhlenbeck noising of ``data`` in a Hermite polynomial basis with one linear
solve per time (no optimizer, no training loop); ``spectral.sample`` then runs the reverse
SDE. Here the "user's array" is a 2-D point cloud made with torch (``--data ring`` or
``--data moons``), or your own file with ``--data-file`` (a ``.pt`` tensor saved with
``torch.save`` or a CSV of numbers, one point per row).

The script compares the samples with held-out points of the same distribution by energy
distance and sliced 2-Wasserstein distance (``samplegrad.spectral`` metrics; lower is
better), next to a Gaussian baseline with the data's mean and covariance.

    python examples/spectral_user_data.py --quick
    python examples/spectral_user_data.py --data moons --degree 6
    python examples/spectral_user_data.py --data-file my_points.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from samplegrad import spectral

NAME = "spectral_user_data"


def ring(n: int, generator: torch.Generator) -> Tensor:
    """Points on a circle of radius 2 with radial noise 0.15: ``(n, 2)``."""
    t = torch.rand(n, generator=generator) * 2 * math.pi
    r = 2.0 + 0.15 * torch.randn(n, generator=generator)
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)


def moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved half circles with Gaussian noise 0.08: ``(n, 2)``."""
    upper = torch.rand(n, generator=generator) < 0.5
    t = torch.rand(n, generator=generator) * math.pi
    a = torch.stack([torch.cos(t), torch.sin(t)], 1)
    b = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    return torch.where(upper[:, None], a, b) + 0.08 * torch.randn(n, 2, generator=generator)


def load_points(path: Path) -> Tensor:
    """A ``(N, d)`` float64 tensor from a ``.pt`` file or a CSV/whitespace text file."""
    if path.suffix == ".pt":
        x = torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True))
    else:
        with path.open(newline="") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delim = "," if "," in sample else None
            rows = [r for r in (csv.reader(fh, delimiter=delim) if delim else
                                (line.split() for line in fh)) if r]
        try:
            x = torch.tensor([[float(v) for v in r] for r in rows])
        except ValueError as err:  # a header row, or text in the file
            raise SystemExit(f"--data-file: {path} must hold numbers only ({err})") from None
    if x.ndim != 2 or x.shape[0] < 10:
        raise SystemExit(f"--data-file: expected an (N, d) array with N >= 10, got "
                         f"{tuple(x.shape)}")
    return x.to(torch.float64)


def gaussian_baseline(data: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` draws from the Gaussian with the data's mean and covariance: ``(n, d)``."""
    mean = data.mean(0)
    cov = torch.atleast_2d(torch.cov(data.T))
    chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(cov.shape[0], dtype=cov.dtype))
    z = torch.randn(n, data.shape[1], generator=generator, dtype=data.dtype)
    return mean + z @ chol.T


def plot(fit: Tensor, samples: dict[str, Tensor], path: Path) -> bool:
    """Scatter plots of the data and each sample set (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = {"data": fit, **samples}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.3),
                             sharex=True, sharey=True)
    for ax, (name, x) in zip(axes, panels.items()):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
        ax.set_title(name)
        ax.set_aspect("equal")
    lo, hi = fit.min(0).values - 0.5, fit.max(0).values + 0.5
    axes[0].set_xlim(float(lo[0]), float(hi[0]))
    axes[0].set_ylim(float(lo[1]), float(hi[1]))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("ring", "moons"), default="ring",
                   help="built-in synthetic data set (ignored with --data-file)")
    p.add_argument("--data-file", type=Path, default=None,
                   help="your own points: .pt tensor or CSV, one point per row")
    p.add_argument("--n", type=int, default=4000, help="points to fit (synthetic data)")
    p.add_argument("--degree", type=int, default=5, help="max total polynomial degree")
    p.add_argument("--max-active", type=int, default=2,
                   help="max coordinates per basis function")
    p.add_argument("--whiten", choices=("none", "standardize", "zca"), default="zca")
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--n-steps", type=int, default=200, help="reverse-SDE steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few seconds: fewer points/steps")
    p.add_argument("--out", type=Path, default=Path("runs/examples") / NAME,
                   help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.n_samples, args.n_steps = 3000, 1000, 100
    for name in ("n", "degree", "max_active", "n_samples", "n_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.data_file is not None and not args.data_file.is_file():
        p.error(f"--data-file: {args.data_file} does not exist")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    if args.data_file is not None:
        points = load_points(args.data_file)
        perm = torch.randperm(len(points), generator=gen)
        n_fit = max(2, int(0.8 * len(points)))  # hold out 20% to score the samples
        data, held_out = points[perm[:n_fit]], points[perm[n_fit:]]
        source = str(args.data_file)
    else:
        make = ring if args.data == "ring" else moons
        data = make(args.n, gen).double()
        held_out = make(args.n_samples, gen).double()
        source = args.data
    print(f"spectral fit on {source}: {tuple(data.shape)} points, degree {args.degree}, "
          f"max_active {args.max_active}, whiten {args.whiten}")

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        model = spectral.fit(data, degree=args.degree, max_active=args.max_active,
                             whiten=args.whiten)
    for w in caught:
        print(f"  warning: {w.message}")
    fit_seconds = time.perf_counter() - t0
    print(f"  fitted {model.basis.size} basis functions in {fit_seconds:.2f} s "
          "(one linear solve per time, no optimizer)")
    t0 = time.perf_counter()
    x = spectral.sample(model, args.n_samples, n_steps=args.n_steps, generator=gen)
    sample_seconds = time.perf_counter() - t0
    print(f"  drew {args.n_samples} samples in {args.n_steps} reverse-SDE steps "
          f"({sample_seconds:.2f} s)")
    baseline = gaussian_baseline(data, args.n_samples, gen)

    rows = {}
    for name, s in (("spectral", x), ("gaussian", baseline), ("training points", data)):
        s = s[: args.n_samples]
        rows[name] = {"energy_distance": spectral.energy_distance(s, held_out),
                      "sliced_w2": spectral.sliced_wasserstein(s, held_out, seed=args.seed)}
    print(f"\ndistance to held-out data   {'energy':>9s}  {'sliced W2':>9s}")
    for name, r in rows.items():
        print(f"  {name:<25s} {r['energy_distance']:9.4f}  {r['sliced_w2']:9.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
               "n_basis": model.basis.size, "fit_seconds": fit_seconds,
               "sample_seconds": sample_seconds, "metrics": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    torch.save(x.float(), args.out / "samples.pt")
    plotted = False
    if data.shape[1] == 2:
        plotted = plot(data, {"spectral": x, "gaussian baseline": baseline},
                       args.out / "samples.png")
    print(f"\noutputs in {args.out}/ (results.json, samples.pt"
          f"{', samples.png' if plotted else ''})")


if __name__ == "__main__":
    main()
