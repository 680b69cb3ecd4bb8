"""The figure of `samplegrad demo`: one panel per part (:mod:`samplegrad_bench.runners.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from samplegrad_bench._common import pyplot, save_figure
from samplegrad_bench.runners import _demo_parts as parts
from samplegrad_bench.tasks.mixtures import (
    REWARD_CENTER,
    hexagon_centers,
    mixture_log_density,
    mixture_reward,
)


def _colors(names: list[str]) -> dict[str, tuple[Any, str]]:
    """(color, linestyle) per estimator: ReDGE family in blues, the peer dotted grey."""
    import matplotlib.pyplot as plt

    ours = [n for n in names if parts.family(n) == parts.FAMILIES["redge"]]
    classic = [n for n in names if parts.family(n) == parts.FAMILIES["classic"]]
    out: dict[str, tuple[Any, str]] = {}
    for i, n in enumerate(ours):
        out[n] = (plt.cm.Blues(0.45 + 0.5 * i / max(1, len(ours) - 1)), "-")
    others = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
              "tab:olive", "tab:cyan"]
    for i, n in enumerate(classic):
        out[n] = (others[i % len(others)], "--")
    for n in names:
        out.setdefault(n, ("0.35", ":"))
    return out


def _mosaic(images: torch.Tensor, cols: int = 6, side: int = 8) -> torch.Tensor:
    """``(n, side*side)`` images in ``cols`` columns with 1-pixel white gutters."""
    n = images.shape[0]
    rows = -(-n // cols)
    out = torch.zeros(rows * (side + 1) + 1, cols * (side + 1) + 1)
    for k in range(n):
        r, c = divmod(k, cols)
        out[1 + r * (side + 1):1 + r * (side + 1) + side,
            1 + c * (side + 1):1 + c * (side + 1) + side] = images[k].view(side, side)
    return out


def figure(cat: tuple, imp: tuple, spec: tuple, path: Path) -> Path:
    """Write the three-panel figure of the parts' ``(summary, plot)`` pairs to ``path``."""
    plt = pyplot()

    fig = plt.figure(figsize=(18, 7.8), layout="constrained")
    f1, f2, f3 = fig.subfigures(1, 3, width_ratios=[1.05, 1.35, 1.0], wspace=0.02)

    # 1. loss curves and gradient MSE
    s1, p1 = cat
    names = list(p1["curves"])  # the registry's order: the same colours in every run
    style = _colors(names)
    a_loss, a_mse = f1.subplots(2, 1, height_ratios=[1.5, 1])
    for n in names:
        steps, curve = p1["curves"][n]
        color, ls = style[n]
        a_loss.plot(steps, [max(v - p1["optimum"], 1e-6) for v in curve], ls, color=color,
                    lw=1.3, label=n)
    a_loss.set(yscale="log", xlabel="Adam step", ylabel="exact E[loss] − optimum",
               title="polynomial program: loss curves")
    a_loss.grid(alpha=0.3)
    a_loss.legend(fontsize=7, ncol=2)
    by_mse = sorted(s1["rows"], key=lambda r: r["gradient MSE"], reverse=True)
    a_mse.barh([r["estimator"] for r in by_mse], [r["gradient MSE"] for r in by_mse],
               color=[style[r["estimator"]][0] for r in by_mse])
    a_mse.set(xscale="log", xlabel="MSE of one gradient estimate (MLP objective)")
    a_mse.tick_params(axis="y", labelsize=7)
    a_mse.grid(alpha=0.3, axis="x")
    f1.suptitle("1. Categorical gradients", fontweight="bold")

    # 2. contours before / after, reward against wall clock
    s2, p2 = imp
    gs = f2.add_gridspec(2, 3, height_ratios=[0.8, 1])
    centers = hexagon_centers(dtype=torch.float64)
    u = torch.linspace(-8, 8, 121, dtype=torch.float64)
    gx, gy = torch.meshgrid(u, u, indexing="xy")
    xy = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
    unrolled_name = next(n for n in s2["methods"] if n != "single loop")
    panels = [("start", p2["theta0"], p2["x0"]),
              (f"single loop, {s2['methods']['single loop']['time (s)']:.1f} s",
               p2["single"]["state"].theta, p2["single"]["state"].x),
              (f"{unrolled_name}, {s2['methods'][unrolled_name]['time (s)']:.1f} s",
               p2["unrolled"]["state"].theta, p2["unrolled"]["state"].x)]
    for j, (title, theta, x) in enumerate(panels):
        ax = f2.add_subplot(gs[0, j])
        theta = theta.detach().to(torch.float64)
        dens = mixture_log_density(xy, theta, centers).exp().reshape(gx.shape)
        ax.contourf(gx, gy, dens, levels=12, cmap="Blues")
        ax.scatter(x[:, 0], x[:, 1], s=1.2, c="tab:red", alpha=0.45, linewidths=0)
        ax.plot(*REWARD_CENTER, marker="*", color="gold", markersize=11, markeredgecolor="k")
        ax.axvline(0, color="k", lw=0.5, ls="--")
        ax.set(xlim=(-8, 8), ylim=(-8, 8), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"{title}\nE[R] = {float(mixture_reward(theta)):.3f}", fontsize=9)
    ax = f2.add_subplot(gs[1, :])
    for key, label, color in (("single", "single loop", "tab:blue"),
                              ("unrolled", unrolled_name, "tab:orange")):
        r = p2[key]
        ax.plot(r["times"][1:], r["exact"][1:].tolist(), color=color, lw=1.4, label=label)
    ax.axhline(s2["start exact E[R]"], color="gray", lw=0.8, ls=":", label="start")
    ax.axhline(s2["best possible E[R]"], color="k", lw=0.8, ls=":", label="best possible")
    if p2["reach_s"] is not None:
        ax.plot([p2["reach_s"]], [p2["target"]], "o", color="tab:blue", ms=6, mfc="none")
        ax.annotate(f"reaches the unrolled final E[R]\nafter {p2['reach_s']:.2g} s "
                    f"({s2['speed-up']:.0f}x faster)", (p2["reach_s"], p2["target"]),
                    xytext=(8, 18), textcoords="offset points", fontsize=8)
    ax.set(xscale="log", xlabel="wall-clock seconds (inside the steps)",
           ylabel=r"exact $E_{\pi_\theta}[R]$",
           title=f"same budget: {s2['settings']['budget_s']:g} s each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left")
    f2.suptitle("2. Implicit Diffusion: reward training of a Langevin sampler",
                fontweight="bold")
    f2.supxlabel(r"top: $\pi_\theta$ (contours), particles (red), reward centre (star), "
                 "reward 0 left of the dashed line", fontsize=8)

    # 3. spectral samples beside real digits
    s3, p3 = spec
    axes = f3.subplots(2, 2)
    rows = {r["model"]: r for r in s3["rows"]}
    sp, ga = rows["spectral score model"], rows["Gaussian (mean + covariance)"]
    for ax, key, title in ((axes[0, 0], "spectral", f"spectral samples\nenergy "
                            f"{sp['energy']:.4f}, SW2 {sp['SW2']:.3f}"),
                           (axes[0, 1], "real", "held-out digits"),
                           (axes[1, 0], "gaussian", f"Gaussian baseline\nenergy "
                            f"{ga['energy']:.4f}, SW2 {ga['SW2']:.3f}")):
        ax.imshow(_mosaic(p3[key]).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    st = s3["settings"]
    axes[1, 1].axis("off")
    floor = rows["training digits (noise floor)"]
    axes[1, 1].text(0.05, 0.95, f"{st['pcs']} principal comp.\nHermite degree {st['degree']}\n"
                    f"{st['basis_size']} basis functions\n\nfit {sp['fit (s)']:.2f} s\n"
                    f"(linear solves,\nno optimizer)\nsample {sp['sample (s)']:.2f} s\n\n"
                    f"noise floor\n(training digits):\nenergy {floor['energy']:.4f}\n"
                    f"SW2 {floor['SW2']:.3f}", va="top", fontsize=8.5,
                    transform=axes[1, 1].transAxes)
    f3.suptitle("3. Optimization-free diffusion (8x8 digits)", fontweight="bold")
    return save_figure(fig, path, dpi=90, tight=False)
