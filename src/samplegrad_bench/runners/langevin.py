"""`samplegrad bench langevin`: Implicit Diffusion's Langevin experiment (docs/methods.md#langevin).

Six unit Gaussians on a hexagon of radius 4 with mixture logits theta, theta_init =
[1.5, 0, 1.5, 0, 1.5, 0], the hard-indicator reward R, ULA with gamma = 0.2 on 1000
particles from N(0, I), SGD on theta with step 0.1. Runs, in one process and from the same
initial particles:

* implicit (single loop), reward only, and reward + lam KL(pi_{theta_init} || pi_theta) with
  a reference population sampled under theta_init;
* unrolled: backprop through T = 100 ULA steps from fresh N(0, I) particles each theta step;
* nested: T = 100 ULA steps (warm-started) with theta fixed, then a covariance step.

Scores: the particle mean reward (what the paper plots) and the exact E_{pi_theta}[R] (closed
form, no sampling noise), KL by quadrature, softmax(theta), wall-clock time (inside the
steps only) and the bytes autograd saves for one theta step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from samplegrad.implicit.langevin import LangevinConfig, fit, init, step
from samplegrad.implicit.langevin_baselines import BaselineConfig, nested_step, unrolled_step
from samplegrad_bench._args import nonneg_float, positive_int
from samplegrad_bench._common import (
    markdown_table,
    pyplot,
    save_figure,
    saved_tensor_bytes,
    write_json,
)
from samplegrad_bench.tasks.mixtures import (
    HEXAGON_THETA_INIT,
    REWARD_CENTER,
    component_rewards,
    hexagon_centers,
    hexagon_reward,
    mixture_kl,
    mixture_log_density,
    mixture_potential,
    mixture_reward,
)


@dataclass(frozen=True)
class LangevinBenchConfig:
    implicit_steps: int = 5000     # theta steps of the single loop (the paper's 5000)
    baseline_steps: int = 400      # theta steps of the unrolled and nested baselines
    n_inner: int = 100             # T: Langevin steps per theta step of the baselines
    n_particles: int = 1000
    step_size: float = 0.2
    lr: float = 0.1
    kl_weight: float = 0.3         # lam of the reward + KL run
    ref_burn_in: int = 300         # ULA steps on the reference particles before the start
    sustain: int = 100             # "reached" = exact reward stays >= target this many steps
    seed: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--implicit-steps", type=positive_int, default=None,
                   help="theta steps of the implicit runs")
    p.add_argument("--baseline-steps", type=positive_int, default=None,
                   help="theta steps of the unrolled / nested runs")
    p.add_argument("--n-inner", type=positive_int, default=None,
                   help="T of unrolled / nested (100)")
    p.add_argument("--kl-weight", type=nonneg_float, default=None,
                   help="weight of the KL term of the regularized implicit run")


def _config(args: argparse.Namespace) -> LangevinBenchConfig:
    base = (LangevinBenchConfig(implicit_steps=600, baseline_steps=10, sustain=20)
            if args.quick else LangevinBenchConfig())
    kw = {"seed": args.seed}
    for name in ("implicit_steps", "baseline_steps", "n_inner", "kl_weight"):
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    return LangevinBenchConfig(**{**asdict(base), **kw})


def _one_step_saved_bytes(step_fn, cfg, theta0: torch.Tensor, seed: int, **init_kw) -> int:
    state = init(mixture_potential, theta0, cfg, shape=2, seed=seed, **init_kw)
    with saved_tensor_bytes() as m:
        step_fn(state, mixture_potential, hexagon_reward, cfg)
    return m["bytes"]


def _first_sustained(exact: torch.Tensor, target: float, sustain: int) -> int | None:
    """First history index after which the exact reward stays >= target for ``sustain``
    logged steps (None if never)."""
    ok = (exact >= target).tolist()
    n = len(ok)
    for i in range(n):
        if all(ok[i:min(n, i + sustain)]):
            return i
    return None


def _interleaved_ms(plan: list, theta0: torch.Tensor, bench: LangevinBenchConfig,
                    rounds: int = 5) -> dict[str, float]:
    """Median milliseconds per theta step of each method, timed in alternation (rounds of
    ~the same duration per method), so that a changing machine load hits all alike."""
    states, times = {}, {name: [] for name, *_ in plan}
    for name, fn, cfg, _, kw, _inner in plan:
        states[name] = init(mixture_potential, theta0, cfg, shape=2, seed=bench.seed, **kw)
        states[name], _ = fn(states[name], mixture_potential, hexagon_reward, cfg)  # warm-up
    for _ in range(rounds):
        for name, fn, cfg, n_steps, _, inner in plan:
            k = max(1, min(100, n_steps) // inner)  # ~100 Langevin steps per method and round
            t0 = time.perf_counter()
            for _ in range(k):
                states[name], _ = fn(states[name], mixture_potential, hexagon_reward, cfg)
            times[name].append(1e3 * (time.perf_counter() - t0) / k)
    return {name: statistics.median(v) for name, v in times.items()}


def _run(name: str, step_fn, cfg: LangevinConfig, n_steps: int, theta0: torch.Tensor,
         bench: LangevinBenchConfig, **init_kw) -> dict:
    state, hist = fit(mixture_potential, hexagon_reward, theta0, cfg, n_steps, step_fn=step_fn,
                      shape=2, seed=bench.seed, desc=f"langevin: {name}", **init_kw)
    thetas = torch.tensor(hist["theta"], dtype=torch.float64)
    exact = mixture_reward(thetas)
    every = max(1, len(thetas) // 100)
    kl_idx = list(range(every - 1, len(thetas), every))
    if kl_idx[-1] != len(thetas) - 1:
        kl_idx.append(len(thetas) - 1)
    th0 = theta0.to(torch.float64)
    kl_exact = [mixture_kl(th0, thetas[i]) for i in kl_idx]
    return {"name": name, "state": state, "hist": hist, "exact": exact,
            "kl_steps": [hist["step"][i] for i in kl_idx], "kl_exact": kl_exact,
            "config": asdict(cfg)}


def _plot(runs: list[dict], theta0: torch.Tensor, x0: torch.Tensor, out: Path) -> list[Path]:
    plt = pyplot()

    centers = hexagon_centers(dtype=torch.float64)
    u = torch.linspace(-8, 8, 161, dtype=torch.float64)
    gx, gy = torch.meshgrid(u, u, indexing="xy")
    xy = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)

    def panel(ax, theta, x, title):
        dens = mixture_log_density(xy, theta.to(torch.float64), centers).exp().reshape(gx.shape)
        ax.contourf(gx, gy, dens, levels=14, cmap="Blues")
        ax.scatter(x[:, 0], x[:, 1], s=1.5, c="tab:red", alpha=0.5, linewidths=0)
        ax.plot(*REWARD_CENTER, marker="*", color="gold", markersize=12, markeredgecolor="k")
        ax.axvline(0, color="k", lw=0.5, ls="--")
        ax.set_xlim(-8, 8), ax.set_ylim(-8, 8), ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)

    paths = []
    implicit = [r for r in runs if r["name"].startswith("implicit")]
    fig, axes = plt.subplots(1, 1 + len(implicit), figsize=(3.6 * (1 + len(implicit)), 3.8))
    panel(axes[0], theta0, x0, "start: pi_theta_init, particles x0 ~ N(0, I)")
    for ax, r in zip(axes[1:], implicit):
        th = r["state"].theta.detach()
        w = ", ".join(f"{v:.2f}" for v in torch.softmax(th, -1).tolist())
        panel(ax, th, r["state"].x, f"{r['name']} after {r['hist']['step'][-1]} steps\n"
                                    f"softmax(theta) = [{w}]")
    fig.suptitle("pi_theta (contours) and particles (red); star: reward centre; "
                 "reward is 0 left of the dashed line", fontsize=9)
    paths.append(out / "contours.png")
    save_figure(fig, paths[-1])

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        h = r["hist"]
        a1.plot(h["step"], r["exact"].tolist(), label=r["name"], lw=1)
        a2.plot(h["time"], r["exact"].tolist(), label=r["name"], lw=1)
    best = float(component_rewards().max())
    for a in (a1, a2):
        a.axhline(best, color="gray", ls=":", lw=1, label="max over theta")
        a.set_ylabel("exact E_pi_theta[R]")
        a.grid(alpha=0.3)
    a1.set_xlabel("theta steps"), a1.set_xscale("log")
    a2.set_xlabel("wall-clock seconds (inside the steps)"), a2.set_xscale("log")
    a1.legend(fontsize=8)
    paths.append(out / "reward_curves.png")
    save_figure(fig, paths[-1])
    return paths


def _summary(r: dict, inner: int, saved: int, at: int) -> dict:
    h = r["hist"]
    n = h["step"][-1]
    i_at = max(i for i, s in enumerate(h["step"]) if s <= at) if h["step"][0] <= at else 0
    return {
        "method": r["name"], "lambda": r["config"]["kl_weight"], "theta steps": n,
        "Langevin steps / theta step": inner, "time (s)": h["time"][-1],
        "ms / theta step": 1e3 * h["time"][-1] / n,
        "particle reward": sum(h["reward"][-10:]) / len(h["reward"][-10:]),
        "exact E[R]": float(r["exact"][-1]),
        f"exact E[R] at step {h['step'][i_at]}": float(r["exact"][i_at]),
        "KL(ref||pi)": r["kl_exact"][-1],
        "softmax(theta)": "[" + ", ".join(
            f"{v:.3f}" for v in torch.softmax(r["state"].theta.detach(), -1).tolist()) + "]",
        "autograd KiB / theta step": saved / 1024,
        "largest theta step": float(torch.tensor(h["theta"]).diff(dim=0).norm(dim=-1).max())
        if n > 1 else math.nan,
    }


def _subsample(r: dict, max_points: int = 200) -> dict:
    """The history at <= max_points evenly spaced steps, floats to 6 significant digits."""
    h = r["hist"]
    idx = sorted(set(torch.linspace(0, len(h["step"]) - 1, min(max_points, len(h["step"])))
                     .round().long().tolist()))
    g = lambda v: float(f"{v:.6g}")  # noqa: E731
    return {
        "step": [h["step"][i] for i in idx], "time": [g(h["time"][i]) for i in idx],
        "particle_reward": [g(h["reward"][i]) for i in idx],
        "exact_reward": [g(float(r["exact"][i])) for i in idx],
        "kl_estimate": [g(h["kl"][i]) for i in idx],
        "grad_norm": [g(h["grad_norm"][i]) for i in idx],
        "theta": [[g(v) for v in h["theta"][i]] for i in idx],
        "kl_exact": {"step": r["kl_steps"], "value": [g(v) for v in r["kl_exact"]]},
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or 1)
    bench = _config(args)
    out = Path(args.out) / ("quick" if args.quick else "")  # quick beside the full results
    out.mkdir(parents=True, exist_ok=True)
    theta0 = torch.tensor(HEXAGON_THETA_INIT)
    common = {"step_size": bench.step_size, "lr": bench.lr, "n_particles": bench.n_particles}
    implicit_cfg = LangevinConfig(**common)
    kl_cfg = LangevinConfig(**common, kl_weight=bench.kl_weight, ref_burn_in=bench.ref_burn_in)
    unrolled_cfg = BaselineConfig(**common, n_inner=bench.n_inner, warm_start=False)
    nested_cfg = BaselineConfig(**common, n_inner=bench.n_inner, warm_start=True)
    plan = [
        ("implicit", step, implicit_cfg, bench.implicit_steps, {}, 1),
        (f"implicit + KL (lam={bench.kl_weight:g})", step, kl_cfg, bench.implicit_steps,
         {"theta_ref": theta0}, 1),
        (f"unrolled T={bench.n_inner}", unrolled_step, unrolled_cfg, bench.baseline_steps, {},
         bench.n_inner),
        (f"nested K={bench.n_inner}", nested_step, nested_cfg, bench.baseline_steps, {},
         bench.n_inner),
    ]
    print(f"Langevin experiment settings: {bench}")
    runs, rows, payload = [], [], {"settings": asdict(bench), "runs": {}}
    for name, fn, cfg, n, kw, inner in plan:
        r = _run(name, fn, cfg, n, theta0, bench, **kw)
        saved = _one_step_saved_bytes(fn, cfg, theta0, bench.seed, **kw)
        runs.append(r)
        rows.append(_summary(r, inner, saved, bench.baseline_steps))
        payload["runs"][name] = {"config": r["config"], "summary": rows[-1],
                                 "history": _subsample(r)}
        payload["table"] = rows
        write_json(out / "langevin.json", payload)  # partial results survive an interrupt

    # speed: time for the single loop to reach each baseline's final exact reward, with the
    # times of the runs themselves and with per-step costs timed in alternation
    ms = _interleaved_ms(plan, theta0, bench, rounds=3 if args.quick else 5)
    imp = runs[0]
    for r, row in zip(runs, rows):
        row["interleaved ms / theta step"] = ms[r["name"]]
        if r is imp or "KL" in r["name"]:
            continue
        i = _first_sustained(imp["exact"], float(r["exact"][-1]), bench.sustain)
        t_imp = math.nan if i is None else imp["hist"]["time"][i]
        n_imp = math.nan if i is None else imp["hist"]["step"][i]
        row["implicit steps to reach"] = n_imp
        row["implicit time to reach (s)"] = t_imp
        row["speed-up of implicit"] = r["hist"]["time"][-1] / t_imp if t_imp > 0 else math.nan
        row["speed-up, interleaved costs"] = (r["hist"]["step"][-1] * ms[r["name"]]) / (
            n_imp * ms[imp["name"]])
    payload["start"] = {"exact E[R]": float(mixture_reward(theta0)),
                        "max exact E[R]": float(component_rewards().max()),
                        "component rewards": component_rewards().tolist()}
    x0 = init(mixture_potential, theta0, implicit_cfg, shape=2, seed=bench.seed).x
    payload["plots"] = [str(p) for p in _plot(runs, theta0, x0, out)]
    write_json(out / "langevin.json", payload)

    cols = ["method", "theta steps", "Langevin steps / theta step", "time (s)",
            "ms / theta step", "interleaved ms / theta step", "particle reward", "exact E[R]",
            f"exact E[R] at step {bench.baseline_steps}", "KL(ref||pi)",
            "autograd KiB / theta step", "largest theta step"]
    print(f"\nstart: exact E[R] = {payload['start']['exact E[R]']:.4f}, best possible "
          f"{payload['start']['max exact E[R]']:.4f}\n")
    print(markdown_table(rows, cols))
    print()
    print(markdown_table([{"method": r["method"], "softmax(theta)": r["softmax(theta)"]}
                          for r in rows]))
    speed = [{"baseline": r["method"], "its final exact E[R]": r["exact E[R]"],
              "its theta steps": r["theta steps"], "its time (s)": r["time (s)"],
              "implicit steps to reach": r["implicit steps to reach"],
              "implicit time to reach (s)": r["implicit time to reach (s)"],
              "speed-up of implicit": r["speed-up of implicit"],
              "speed-up, interleaved costs": r["speed-up, interleaved costs"]}
             for r in rows if "implicit time to reach (s)" in r]
    costs = ", ".join(f"{k}: {v:.1f}" for k, v in ms.items())
    print(f"\nmedian ms per theta step, timed in alternation: {costs}")
    print()
    print(markdown_table(speed))
    payload["speed"] = speed
    write_json(out / "langevin.json", payload)
    return payload
