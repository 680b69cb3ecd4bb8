"""The three parts of `samplegrad demo` (computation only; printing and the figure live in
:mod:`samplegrad_bench.runners.demo`).

Each part returns ``(summary, plot)``: ``summary`` holds plain numbers for the JSON,
``plot`` the tensors the figure needs (curves, particles, images).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from samplegrad._progress import progress
from samplegrad.implicit.langevin import LangevinConfig, init, step
from samplegrad.implicit.langevin_baselines import BaselineConfig, unrolled_step
from samplegrad_bench._common import seed_all
from samplegrad_bench.estimators import (
    PEERS,
    bench_methods,
    default_knobs,
    fit_n_samples,
    unsupported,
)
from samplegrad_bench.runners import gradients, polyprog
from samplegrad_bench.runners.langevin import _first_sustained
from samplegrad_bench.tasks import polyprog as pp_task
from samplegrad_bench.tasks.gradient_problems import get_problem
from samplegrad_bench.tasks.mixtures import (
    HEXAGON_THETA_INIT,
    component_rewards,
    hexagon_reward,
    mixture_potential,
    mixture_reward,
)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the three parts (``--quick``: :data:`QUICK`)."""

    # 1. categorical gradients
    n_vars: int = 64                # polynomial program: binary variables
    batch: int = 32                 # samples per Adam step
    steps: int = 300                # Adam steps
    power: float = 2.0              # loss mean_d |x_d - 0.45|^power
    lr: float = 0.05
    draws: int = 2000               # independent gradient estimates per estimator
    grad_problem: str = "mlp_L4_K5"
    # 2. implicit diffusion
    budget_s: float = 6.0           # wall-clock seconds for each of the two methods
    n_particles: int = 1000
    n_inner: int = 100              # T of unrolled backprop
    step_size: float = 0.2          # ULA gamma
    theta_lr: float = 0.1           # SGD on theta
    sustain: int = 100              # "reached" = exact reward stays >= target this many steps
    # 3. optimization-free diffusion
    pcs: int = 16                   # principal components of the 8x8 digits
    degree: int = 4                 # total degree of the Hermite basis
    max_active: int = 2             # coordinates a basis function may depend on
    n_times: int = 24               # spectral time grid
    n_samples: int = 2000
    sample_steps: int = 100         # reverse-SDE steps


QUICK = DemoConfig(steps=30, draws=60, budget_s=0.4, n_particles=200, n_inner=20, sustain=10,
                   pcs=8, degree=3, n_samples=400, sample_steps=30)

FAMILIES = {"redge": "ReDGE", "classic": "classic", "peer": "peer package"}


def family(name: str) -> str:
    if name in PEERS:
        return FAMILIES["peer"]
    return FAMILIES["redge"] if name.startswith("redge") else FAMILIES["classic"]


def _train_knobs(name: str) -> dict[str, Any]:
    """Default knobs; REINFORCE trains with an EMA-of-past-losses baseline (decay 0.9)."""
    kn = default_knobs(name)
    if name == "reinforce":
        kn.pop("baseline", None)
        kn["ema"] = 0.9
    return kn


# ---- 1. categorical gradients ---------------------------------------------------------------
def categorical(cfg: DemoConfig, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every estimator at its default knobs: Adam on the polynomial program (exact final
    E[loss]) and the MSE of single gradient estimates on a small MLP objective (exact
    gradient by enumeration). One row per estimator, both scores side by side."""
    problem = get_problem(cfg.grad_problem, seed=seed)
    k = problem.logits.shape[-1]  # ARM/DisARM (binary only) sit out on a K > 2 problem
    names = [n for n in bench_methods() if not unsupported(n, fit_n_samples(n, 1), k)]
    _, truth = problem.exact()
    bar = progress(desc="1/3 categorical gradients", total=2 * len(names))
    rows, curves = [], {}
    for name in names:
        bar.set_postfix_str(f"polynomial program: {name}")
        r = polyprog.optimize(name, _train_knobs(name), cfg.power, seed, n_vars=cfg.n_vars,
                              batch=cfg.batch, steps=cfg.steps, lr=cfg.lr,
                              log_every=max(1, cfg.steps // 60))
        curves[name] = (r["curve_steps"], r["curve"])
        bar.update()
        bar.set_postfix_str(f"gradient MSE: {name}")
        knobs = default_knobs(name)
        if name == "reinforce":
            knobs["baseline"] = None
        n = fit_n_samples(name, 1)
        seed_all(seed)
        est = gradients.draw_estimates(problem.f, problem.logits, name, cfg.draws, n, **knobs)
        s = gradients.gradient_stats(est, truth)
        bar.update()
        rows.append({"family": family(name), "estimator": name,
                     "knobs": polyprog.knob_str(_train_knobs(name)),
                     "final E[loss]": r["final"], "gap to optimum": r["gap"],
                     "gradient MSE": s["mse"], "bias²": s["bias2"], "variance": s["variance"],
                     "cosine": s["cosine"]})
    bar.close()
    order = list(FAMILIES.values())
    rows.sort(key=lambda r: (order.index(r["family"]), r["final E[loss]"]))
    summary = {
        "polynomial_program": {"n_vars": cfg.n_vars, "batch": cfg.batch, "steps": cfg.steps,
                               "power": cfg.power, "lr": cfg.lr,
                               "start": float(pp_task.expected_loss(
                                   torch.zeros(cfg.n_vars, 2), cfg.power)),
                               "optimum": pp_task.optimum(cfg.power)},
        "gradient_problem": {"name": problem.name, "description": problem.description,
                             "draws": cfg.draws, "grad_norm2": float((truth ** 2).sum())},
        "rows": rows,
    }
    return summary, {"curves": curves, "optimum": pp_task.optimum(cfg.power)}


# ---- 2. implicit diffusion ------------------------------------------------------------------
def _start(cfg: LangevinConfig, seed: int) -> torch.Tensor:
    """The initial particles ``x0 ~ N(0, I)``, ``(n_particles, 2)``, shared by both methods."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(cfg.n_particles, 2, generator=g)


def _timed_run(step_fn, cfg: LangevinConfig, budget_s: float, theta0: torch.Tensor, seed: int,
               bar) -> dict[str, Any]:
    """Steps of ``step_fn`` until ``budget_s`` seconds were spent inside them (at least one):
    the time after each step, theta after each step (index 0: the start), the final state."""
    state = init(mixture_potential, theta0, cfg, x0=_start(cfg, seed), seed=seed)
    thetas, times, elapsed, shown = [theta0.detach().clone()], [0.0], 0.0, 0.0
    while elapsed < budget_s or len(times) == 1:
        t0 = time.perf_counter()
        state, _ = step_fn(state, mixture_potential, hexagon_reward, cfg)
        elapsed += time.perf_counter() - t0
        thetas.append(state.theta.detach().clone())
        times.append(elapsed)
        bar.update(min(elapsed, budget_s) - shown)
        shown = min(elapsed, budget_s)
    exact = mixture_reward(torch.stack(thetas).to(torch.float64))
    return {"state": state, "times": times, "exact": exact, "steps": len(times) - 1}


def implicit(cfg: DemoConfig, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reward training of the hexagon mixture's logits: the single loop (one Langevin step,
    one theta step) against backprop through ``n_inner`` unrolled Langevin steps, each for
    the same wall-clock budget, from the same start."""
    theta0 = torch.tensor(HEXAGON_THETA_INIT)
    common = {"step_size": cfg.step_size, "lr": cfg.theta_lr, "n_particles": cfg.n_particles}
    single_cfg = LangevinConfig(**common)
    unrolled_cfg = BaselineConfig(**common, n_inner=cfg.n_inner, warm_start=False)
    bar = progress(desc="2/3 implicit diffusion", total=round(2 * cfg.budget_s, 2),
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"
                              "{postfix}")
    bar.set_postfix_str("single loop")
    single = _timed_run(step, single_cfg, cfg.budget_s, theta0, seed, bar)
    bar.set_postfix_str(f"unrolled T={cfg.n_inner}")
    unrolled = _timed_run(unrolled_step, unrolled_cfg, cfg.budget_s, theta0, seed, bar)
    bar.close()
    start = float(mixture_reward(theta0.to(torch.float64)))
    target = float(unrolled["exact"][-1])
    reach_s = reach_steps = speed_up = None
    if target > start:  # else the baseline did not improve: nothing to reach
        i = _first_sustained(single["exact"], target, cfg.sustain)
        if i is not None:
            reach_s, reach_steps = single["times"][i], i
            speed_up = unrolled["times"][-1] / reach_s
    methods = {}
    for name, r, inner in (("single loop", single, 1),
                           (f"unrolled T={cfg.n_inner}", unrolled, cfg.n_inner)):
        methods[name] = {
            "theta steps": r["steps"], "Langevin steps / theta step": inner,
            "time (s)": r["times"][-1], "ms / theta step": 1e3 * r["times"][-1] / r["steps"],
            "exact E[R]": float(r["exact"][-1]),
            "gain in E[R]": float(r["exact"][-1] - r["exact"][0]),
            "softmax(theta)": torch.softmax(r["state"].theta.detach(), -1).tolist()}
    summary = {
        "settings": {"budget_s": cfg.budget_s, "n_particles": cfg.n_particles,
                     "n_inner": cfg.n_inner, "step_size": cfg.step_size,
                     "theta_lr": cfg.theta_lr, "sustain": cfg.sustain,
                     "theta_init": list(HEXAGON_THETA_INIT)},
        "start exact E[R]": start, "best possible E[R]": float(component_rewards().max()),
        "methods": methods,
        "target (unrolled final E[R])": target,
        "single loop time to reach (s)": reach_s, "single loop steps to reach": reach_steps,
        "speed-up": speed_up,
        "curves": {name: _subsample(r["times"], r["exact"]) for name, r in
                   (("single loop", single), ("unrolled", unrolled))},
    }
    x0 = _start(single_cfg, seed)
    plot = {"theta0": theta0, "x0": x0, "single": single, "unrolled": unrolled,
            "target": target, "reach_s": reach_s}
    return summary, plot


def _subsample(times: list[float], exact: torch.Tensor, n: int = 200) -> dict[str, list]:
    idx = sorted(set(torch.linspace(0, len(times) - 1, min(n, len(times))).round().long()
                     .tolist()))
    return {"time_s": [float(f"{times[i]:.6g}") for i in idx],
            "exact_reward": [float(f"{float(exact[i]):.6g}") for i in idx]}


# ---- 3. optimization-free diffusion ---------------------------------------------------------
def spectral_part(cfg: DemoConfig, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A spectral score model of the 8x8 digits in whitened principal-component space (one
    linear solve per time), sampled with the reverse SDE; energy distance, MMD² and sliced
    W2 to the held-out digits, against a Gaussian fitted to the same components and the
    training digits themselves (the noise floor of the metrics)."""
    from samplegrad import spectral
    from samplegrad_bench.data import load_digits

    bar = progress(desc="3/3 optimization-free diffusion", total=4)
    bar.set_postfix_str("PCA")
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    train, test = train.to(torch.float64), test.to(torch.float64)
    pca = spectral.Affine.fit(train, "pca", n_components=cfg.pcs)
    y, y_test = pca.encode(train), pca.encode(test)
    bar.update()
    bar.set_postfix_str("fit (one solve per time)")
    t0 = time.perf_counter()
    model = spectral.fit(y, degree=cfg.degree, max_active=cfg.max_active, n_times=cfg.n_times,
                         t_min=1e-3, t_max=10.0, ridge=1e-8, whiten="none")
    fit_s = time.perf_counter() - t0
    bar.update()
    bar.set_postfix_str("sample")
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    x = spectral.sample(model, cfg.n_samples, n_steps=cfg.sample_steps, t_max=8.0, t_min=1e-3,
                        generator=g, show_progress=False)
    sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chol = torch.linalg.cholesky(torch.cov(y.T))
    gauss = y.mean(0) + torch.randn(cfg.n_samples, cfg.pcs, dtype=y.dtype, generator=g) @ chol.T
    gauss_s = time.perf_counter() - t0
    bar.update()
    bar.set_postfix_str("metrics")
    rows = []
    for name, s, fs, ss in (("spectral score model", x, fit_s, sample_s),
                            ("Gaussian (mean + covariance)", gauss, 0.0, gauss_s),
                            ("training digits (noise floor)", y, 0.0, 0.0)):
        finite = bool(torch.isfinite(s).all())
        m = spectral.sample_metrics(s, y_test, seed=seed) if finite else \
            {"energy": math.inf, "mmd": math.inf, "sw2": math.inf}
        rows.append({"model": name, "samples": s.shape[0], "fit (s)": fs, "sample (s)": ss,
                     "energy": m["energy"], "MMD²": m["mmd"], "SW2": m["sw2"]})
    bar.update()
    bar.close()
    summary = {"settings": {"pcs": cfg.pcs, "degree": cfg.degree, "max_active": cfg.max_active,
                            "basis_size": model.basis.size, "n_times": cfg.n_times,
                            "n_train": train.shape[0], "n_test": test.shape[0],
                            "n_samples": cfg.n_samples, "sample_steps": cfg.sample_steps},
               "rows": rows}
    n = 36
    plot = {"spectral": pca.decode(x[:n]).clamp(0, 1), "gaussian": pca.decode(gauss[:n])
            .clamp(0, 1), "real": test[:n]}
    return summary, plot
