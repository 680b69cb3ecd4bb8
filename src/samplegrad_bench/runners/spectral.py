"""`samplegrad bench spectral`: optimization-free spectral score models vs neural score matching.

Sections (docs/methods.md#spectral), each measured in one process with the same OU forward process
and the same sampler (reverse SDE, Euler-Maruyama) for both methods:

1. Gaussian mixtures in d = 1..20: relative L2 score error against the closed-form OU score,
   against t and against basis size; sample quality (energy distance, sliced W2).
2. Perturbed Gaussians ``p ∝ exp(-|x|^2/2 - delta sum x_i^4/4)`` in d = 16, sweeping delta:
   score error against the exact (quadrature) score, sample quality.
3. Lattice phi^4 (Ginzburg-Landau) in d = 16 against MALA reference samples (cached).
4. Real data: 8x8 digits and Fashion-MNIST in principal-component space, sample grids.

Writes ``runs/spectral/spectral.json`` (``--publish``: ``docs/results/spectral/``;
``--quick``: ``runs/spectral/quick/``) after every section (an interrupt keeps what is
done), ``summary.md`` with the tables, and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from samplegrad.checkpoint import CheckpointError
from samplegrad.spectral import (
    Affine,
    fit,
    random_mixture,
    relative_score_error,
    sample,
    sample_metrics,
    train_dsm,
)
from samplegrad_bench._args import comma_list, positive_int
from samplegrad_bench._common import (
    Timer,
    markdown_table,
    progress,
    pyplot,
    save_figure,
    write_json,
)
from samplegrad_bench.tasks.boltzmann import PerturbedGaussian, Phi4Lattice, reference_samples


@dataclass
class BenchConfig:
    """Settings of one run (``--quick`` shrinks every size)."""

    n_train: int = 4000
    n_eval: int = 2000           # samples drawn per model and held-out reference size
    score_times: tuple = (0.01, 0.1, 0.5, 1.0)
    gmm_dims: tuple = (1, 2, 5, 10, 20)
    gmm_degrees: dict = field(default_factory=lambda: {1: (2, 4, 6, 8), 2: (2, 4, 6),
                                                       5: (2, 3, 4), 10: (2, 3, 4), 20: (2, 3)})
    gmm_components: int = 3
    gmm_separation: float = 1.0
    max_active: int = 2
    deltas: tuple = (0.0, 0.1, 0.3, 1.0, 3.0)
    pg_dim: int = 16
    pg_degrees: tuple = (3, 4)
    phi4: tuple = ((-0.5, 0.5), (-2.0, 0.25))  # (m2, J) settings on a 4x4 lattice, g = 1
    phi4_degree: int = 4
    mala_chains: int = 1000
    mala_burn: int = 2000
    mala_thin: int = 20
    digits_pcs: int = 16
    digits_degree: int = 3
    fashion_pcs: int = 32
    fashion_degree: int = 3
    fashion_train: int = 10000
    n_times: int = 24            # spectral time grid
    ridge: float = 1e-8
    neural_steps: int = 2000
    budget_steps: tuple = (50, 100, 250, 500, 1000, 2000)  # neural budgets, section "budget"
    neural_hidden: int = 128
    neural_layers: int = 3
    sample_steps: int = 100
    t_min: float = 1e-3
    t_max: float = 8.0


QUICK = dict(n_train=1500, n_eval=600, score_times=(0.01, 0.1, 1.0), gmm_dims=(1, 2, 5),
             gmm_degrees={1: (2, 6), 2: (2, 4), 5: (2, 3)}, deltas=(0.0, 1.0), pg_dim=4,
             pg_degrees=(3,), phi4=((-0.5, 0.5),), phi4_degree=3, mala_chains=300, mala_burn=300,
             mala_thin=5, digits_pcs=8, digits_degree=2, fashion_pcs=0, neural_steps=150,
             budget_steps=(50, 150),
             neural_hidden=64, neural_layers=2, sample_steps=40, n_times=12)


ALL_SECTIONS = ("gmm", "perturbed", "phi4", "digits", "fashion", "budget")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sections", type=comma_list(choices=ALL_SECTIONS),
                   default=list(ALL_SECTIONS), metavar="NAME,...",
                   help="comma list of " + ",".join(ALL_SECTIONS)
                   + " (a subset updates those sections in the existing JSON)")
    p.add_argument("--neural-steps", type=positive_int, default=None, help="DSM training steps")


# ---- shared pieces ----------------------------------------------------------------------
def _neural(cfg: BenchConfig, data: torch.Tensor, seed: int, whiten: str = "none"):
    return train_dsm(data, steps=cfg.neural_steps, hidden=cfg.neural_hidden,
                     layers=cfg.neural_layers, whiten=whiten, seed=seed, t_min=cfg.t_min,
                     t_max=10.0)


def _spectral(cfg: BenchConfig, data: torch.Tensor, degree: int, whiten: str = "none",
              method: str = "linear"):
    return fit(data, degree=degree, max_active=cfg.max_active, n_times=cfg.n_times,
               t_min=cfg.t_min, t_max=10.0, ridge=cfg.ridge, whiten=whiten, method=method)


def _draw(cfg: BenchConfig, model, seed: int) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    with Timer() as tm:
        x = sample(model, cfg.n_eval, n_steps=cfg.sample_steps, t_max=cfg.t_max,
                   t_min=cfg.t_min, generator=g)
    return x, tm.seconds


def _quality_row(cfg: BenchConfig, name: str, model, ref: torch.Tensor, seed: int,
                 **extra: Any) -> dict[str, Any]:
    x, secs = _draw(cfg, model, seed)
    m = sample_metrics(x, ref, seed=seed) if torch.isfinite(x).all() else \
        {"energy": math.inf, "mmd": math.inf, "sw2": math.inf}
    return {**extra, "model": name, "fit (s)": model.info["fit_seconds"], "sample (s)": secs,
            "energy": m["energy"], "MMD²": m["mmd"], "SW2": m["sw2"]}


def _floor_row(ref_a: torch.Tensor, ref_b: torch.Tensor, seed: int, **extra: Any) -> dict:
    m = sample_metrics(ref_a, ref_b, seed=seed)
    return {**extra, "model": "reference (floor)", "fit (s)": 0.0, "sample (s)": 0.0,
            "energy": m["energy"], "MMD²": m["mmd"], "SW2": m["sw2"]}


def _models(cfg: BenchConfig, data: torch.Tensor, degree: int, seed: int,
            whiten: str = "none") -> dict[str, Any]:
    return {f"spectral D={degree}": _spectral(cfg, data, degree, whiten),
            f"perturbative D={degree}": _spectral(cfg, data, degree, whiten, "perturbative"),
            "neural DSM": _neural(cfg, data, seed, whiten)}


# ---- 1. Gaussian mixtures -----------------------------------------------------------------
def gmm_section(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    err_rows, size_rows, q_rows = [], [], []
    for d in progress(cfg.gmm_dims, desc="gmm dims"):
        gm = random_mixture(d, cfg.gmm_components, cfg.gmm_separation, seed=seed + d)
        g = torch.Generator().manual_seed(seed + 100 + d)
        data, ref = gm.sample(cfg.n_train, g), gm.sample(cfg.n_eval, g)
        evals = {t: gm.ou_marginal(t).sample(cfg.n_eval, g) for t in cfg.score_times}
        top = max(cfg.gmm_degrees[d])
        models: dict[str, Any] = {}
        for D in cfg.gmm_degrees[d]:
            m = _spectral(cfg, data, D)
            models[f"spectral D={D}"] = m
            errs = {t: relative_score_error(m.score(x, t), gm.ou_score(x, t))
                    for t, x in evals.items()}
            size_rows.append({"d": d, "degree": D, "K": m.basis.size,
                              "fit (s)": m.info["fit_seconds"],
                              **{f"err t={t}": e for t, e in errs.items()}})
        models[f"perturbative D={top}"] = _spectral(cfg, data, top, method="perturbative")
        models["neural DSM"] = _neural(cfg, data, seed)
        for name, m in models.items():
            if name.startswith("spectral") and name != f"spectral D={top}":
                continue
            err_rows.append({"d": d, "model": name, "fit (s)": m.info["fit_seconds"],
                             **{f"err t={t}": relative_score_error(m.score(x, t),
                                                                   gm.ou_score(x, t))
                                for t, x in evals.items()}})
            q_rows.append(_quality_row(cfg, name, m, ref, seed, d=d))
        q_rows.append(_floor_row(gm.sample(cfg.n_eval, g), ref, seed, d=d))
    return {"score_error": err_rows, "basis_size": size_rows, "quality": q_rows}


# ---- 2. perturbed Gaussians ---------------------------------------------------------------
def perturbed_section(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    err_rows, q_rows = [], []
    for delta in progress(cfg.deltas, desc="perturbed delta"):
        target = PerturbedGaussian(cfg.pg_dim, delta)
        g = torch.Generator().manual_seed(seed + 7)
        data, ref = target.sample(cfg.n_train, g), target.sample(cfg.n_eval, g)
        n_err = max(200, cfg.n_eval // 4)
        evals = {}
        for t in cfg.score_times:  # exact draws of p_t: x_t = e^-t x_0 + sigma z
            s = math.exp(-t)
            x0 = target.sample(n_err, g)
            evals[t] = s * x0 + math.sqrt(1 - s * s) * torch.randn(x0.shape, dtype=x0.dtype,
                                                                     generator=g)
        truth = {t: target.ou_score(x, t, n_grid=2001) for t, x in evals.items()}
        models = {f"spectral D={D}": _spectral(cfg, data, D) for D in cfg.pg_degrees}
        top = max(cfg.pg_degrees)
        models[f"perturbative D={top}"] = _spectral(cfg, data, top, method="perturbative")
        models["neural DSM"] = _neural(cfg, data, seed)
        for name, m in models.items():
            err_rows.append({"delta": delta, "model": name, "fit (s)": m.info["fit_seconds"],
                             **{f"err t={t}": relative_score_error(m.score(x, t), truth[t])
                                for t, x in evals.items()}})
            q_rows.append(_quality_row(cfg, name, m, ref, seed, delta=delta))
        q_rows.append(_floor_row(target.sample(cfg.n_eval, g), ref, seed, delta=delta))
    return {"score_error": err_rows, "quality": q_rows}


# ---- 3. phi^4 lattice ---------------------------------------------------------------------
def phi4_section(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    rows, mala = [], {}
    for m2, J in cfg.phi4:
        target = Phi4Lattice(side=4, J=J, m2=m2, g=1.0)
        n = cfg.n_train + 2 * cfg.n_eval
        with Timer() as tm:
            ref_all = reference_samples(target, n, seed=seed, n_chains=cfg.mala_chains,
                                        n_burn=cfg.mala_burn, thin=cfg.mala_thin)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        ref_all = ref_all[perm]
        data, ref = ref_all[:cfg.n_train], ref_all[cfg.n_train:cfg.n_train + cfg.n_eval]
        other = ref_all[cfg.n_train + cfg.n_eval:]
        tag = f"m2={m2} J={J}"
        for name, m in _models(cfg, data, cfg.phi4_degree, seed, whiten="zca").items():
            row = _quality_row(cfg, name, m, ref, seed, target=tag)
            rows.append(row)
        rows.append(_floor_row(other, ref, seed, target=tag))
        g = torch.Generator().manual_seed(seed)
        gauss = ref.mean(0) + torch.randn(cfg.n_eval, 16, dtype=torch.float64,
                                          generator=g) @ torch.linalg.cholesky(
            torch.cov(data.T)).T
        rows.append({**_floor_row(gauss, ref, seed, target=tag),
                     "model": "Gaussian fit (no score model)"})
        mala[tag] = tm.seconds
    return {"quality": rows, "mala_seconds_or_cache_load": mala}


# ---- 4. real data -------------------------------------------------------------------------
def _image_section(cfg: BenchConfig, name: str, train: torch.Tensor, test: torch.Tensor,
                   pcs: int, degree: int, side: int, out: Path, seed: int) -> dict[str, Any]:
    pca = Affine.fit(train.to(torch.float64), "pca", n_components=pcs)
    y, y_ref = pca.encode(train.to(torch.float64)), pca.encode(test.to(torch.float64))
    rows, images = [], {"data": test[:cfg.n_eval]}
    for mname, m in _models(cfg, y, degree, seed).items():
        if mname.startswith("perturbative"):
            continue
        x, secs = _draw(cfg, m, seed)
        met = sample_metrics(x, y_ref, seed=seed)
        rows.append({"data": name, "PCs": pcs, "model": mname,
                     "fit (s)": m.info["fit_seconds"], "sample (s)": secs,
                     "energy": met["energy"], "MMD²": met["mmd"], "SW2": met["sw2"]})
        images[mname] = pca.decode(x).clamp(0, 1)
    met = sample_metrics(pca.encode(train[:cfg.n_eval].to(torch.float64)), y_ref, seed=seed)
    rows.append({"data": name, "PCs": pcs, "model": "train data (floor)", "fit (s)": 0.0,
                 "sample (s)": 0.0, "energy": met["energy"], "MMD²": met["mmd"],
                 "SW2": met["sw2"]})
    images["data (PCA-projected)"] = pca.decode(y_ref[:64]).clamp(0, 1)
    _plot_grid(images, side, out / f"samples_{name}.png", name)
    return {"quality": rows}


def digits_section(cfg: BenchConfig, seed: int, out: Path) -> dict[str, Any]:
    from samplegrad_bench.data import load_digits

    train, _ = load_digits("train")
    test, _ = load_digits("test")
    return _image_section(cfg, "digits", train, test, cfg.digits_pcs, cfg.digits_degree, 8,
                          out, seed)


def fashion_section(cfg: BenchConfig, seed: int, out: Path) -> dict[str, Any]:
    from samplegrad_bench.data import load_idx_dataset

    if cfg.fashion_pcs <= 0:
        return {"skipped": "not in --quick"}
    try:
        train, _ = load_idx_dataset("train")
        test, _ = load_idx_dataset("test")
    except FileNotFoundError as e:
        print(f"[spectral] skipping Fashion-MNIST: {e}")
        return {"skipped": str(e)}
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return _image_section(cfg, "fashion", train[perm[:cfg.fashion_train]],
                          test[:cfg.n_eval], cfg.fashion_pcs, cfg.fashion_degree, 28, out,
                          seed)


# ---- 5. neural training budget ------------------------------------------------------------
def budget_section(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    """Is the fit-time ratio fair? Neural DSM at several step budgets against one spectral fit:
    the smallest budget whose energy distance is within the noise of the spectral one."""
    g = torch.Generator().manual_seed(seed + 11)
    gm = random_mixture(5, cfg.gmm_components, cfg.gmm_separation, seed=seed + 5)
    pg = PerturbedGaussian(cfg.pg_dim, 1.0)
    phi = Phi4Lattice(4, J=cfg.phi4[0][1], m2=cfg.phi4[0][0], g=1.0)
    n_phi = cfg.n_train + 2 * cfg.n_eval
    phi_all = reference_samples(phi, n_phi, seed=seed, n_chains=cfg.mala_chains,
                                n_burn=cfg.mala_burn, thin=cfg.mala_thin)
    phi_all = phi_all[torch.randperm(n_phi, generator=torch.Generator().manual_seed(seed))]
    problems = {  # name: (train, reference, second reference, degree, whiten)
        "GMM d=5": (gm.sample(cfg.n_train, g), gm.sample(cfg.n_eval, g),
                    gm.sample(cfg.n_eval, g), max(cfg.gmm_degrees.get(5, (3,))), "none"),
        f"perturbed d={cfg.pg_dim} delta=1": (pg.sample(cfg.n_train, g), pg.sample(cfg.n_eval, g),
                                              pg.sample(cfg.n_eval, g), min(cfg.pg_degrees),
                                              "none"),
        "phi4 " + f"m2={phi.m2} J={phi.J}": (phi_all[:cfg.n_train],
                                             phi_all[cfg.n_train:cfg.n_train + cfg.n_eval],
                                             phi_all[cfg.n_train + cfg.n_eval:],
                                             cfg.phi4_degree, "zca"),
    }
    rows, summary = [], []
    for name, (data, ref, ref2, degree, whiten) in progress(problems.items(), desc="budget"):
        spec = _quality_row(cfg, f"spectral D={degree}", _spectral(cfg, data, degree, whiten),
                            ref, seed, target=name)
        floor = _floor_row(ref2, ref, seed, target=name)
        rows += [spec, floor]
        neural = []
        for steps in cfg.budget_steps:
            m = train_dsm(data, steps=steps, hidden=cfg.neural_hidden, layers=cfg.neural_layers,
                          whiten=whiten, seed=seed, t_min=cfg.t_min, t_max=10.0)
            neural.append(_quality_row(cfg, f"neural DSM {steps} steps", m, ref, seed,
                                       target=name))
        rows += neural
        summary.append(_budget_match(name, spec, floor, neural, max(cfg.budget_steps)))
    return {"quality": rows, "match": summary}


def _budget_match(name: str, spec: dict, floor: dict, neural: list[dict], top: int) -> dict:
    """The smallest neural budget as good as the spectral fit, by two rules: energy distance
    within the noise (2 |floor energy|), and sliced W2 within 2 % of the spectral one."""
    rules = {"energy": lambda r: r["energy"] <= spec["energy"] + 2 * abs(floor["energy"]),
             "SW2": lambda r: r["SW2"] <= 1.02 * spec["SW2"]}
    out: dict[str, Any] = {"target": name, "spectral": spec["model"],
                           "spectral fit (s)": spec["fit (s)"]}
    for rule, ok in rules.items():
        hit = next((r for r in neural if ok(r)), None)
        out[f"steps to match ({rule})"] = hit["model"].split()[2] if hit else f"> {top}"
        out[f"time ratio ({rule})"] = hit["fit (s)"] / spec["fit (s)"] if hit else math.nan
    return out


# ---- plots --------------------------------------------------------------------------------
def _plot_grid(images: dict[str, torch.Tensor], side: int, path: Path, title: str) -> None:
    plt = pyplot()
    n = 8
    fig, axes = plt.subplots(len(images), 1, figsize=(n * 0.9, len(images) * 1.1 + 0.3))
    for ax, (label, imgs) in zip(axes, images.items()):
        strip = torch.cat([imgs[i].view(side, side) for i in range(n)], 1)
        ax.imshow(strip.numpy(), cmap="gray_r" if side == 8 else "gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=90)


def _plot_errors(res: dict[str, Any], out: Path, times: tuple) -> None:
    plt = pyplot()
    if "gmm" in res:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        dims = sorted({r["d"] for r in res["gmm"]["score_error"]})
        colors = {d: plt.cm.viridis(i / max(1, len(dims) - 1)) for i, d in enumerate(dims)}
        for r in res["gmm"]["score_error"]:
            style = {"spectral": "-", "perturbative": ":", "neural DSM": "--"}
            ls = next(v for k, v in style.items() if r["model"].startswith(k))
            axes[0].plot(times, [r[f"err t={t}"] for t in times], ls, marker="o", ms=3,
                         color=colors[r["d"]], label=f"d={r['d']} {r['model']}")
        axes[0].set(xscale="log", yscale="log", xlabel="t", ylabel="relative L2 score error",
                    title="Gaussian mixtures: error vs t")
        axes[0].legend(fontsize=5, ncol=2)
        for d in dims:
            rr = [r for r in res["gmm"]["basis_size"] if r["d"] == d]
            axes[1].plot([r["K"] for r in rr], [r[f"err t={times[1]}"] for r in rr], "-o",
                         ms=3, color=colors[d], label=f"d={d}")
        axes[1].set(xscale="log", yscale="log", xlabel="basis size K",
                    ylabel=f"score error at t={times[1]}", title="error vs basis size")
        axes[1].legend(fontsize=7)
        save_figure(fig, out / "gmm_score_error.png", dpi=100)
    if "perturbed" in res:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        rows = res["perturbed"]["score_error"]
        for name in dict.fromkeys(r["model"] for r in rows):
            rr = [r for r in rows if r["model"] == name]
            for t, mk in zip(times[:2], ("o", "s")):
                ax.plot([max(r["delta"], 1e-2) for r in rr], [r[f"err t={t}"] for r in rr],
                        "-" + mk, ms=3, label=f"{name}, t={t}")
        ax.set(xscale="log", yscale="log", xlabel="delta (0 drawn at 0.01)",
               ylabel="relative L2 score error", title="perturbed Gaussian, d=16")
        ax.legend(fontsize=6)
        save_figure(fig, out / "perturbed_score_error.png", dpi=100)


# ---- runner -------------------------------------------------------------------------------
def _ratios(rows: list[dict], key: str) -> list[dict]:
    """Per group: neural fit time / spectral fit time, the two energy distances, and a verdict
    where "equal" means the energies differ by less than the noise, taken as twice the
    magnitude of the floor (the energy distance between two reference sets of the same size)."""
    out = []
    for k in dict.fromkeys(r[key] for r in rows):
        grp = {r["model"]: r for r in rows if r[key] == k}
        spec = [r for n, r in grp.items() if n.startswith("spectral")]
        floor = [r for n, r in grp.items() if "floor" in n]
        if not spec or "neural DSM" not in grp:
            continue
        nn = grp["neural DSM"]
        noise = 2 * abs(floor[0]["energy"]) if floor else 0.0
        for s in spec:
            diff = s["energy"] - nn["energy"]
            verdict = "equal" if abs(diff) <= noise else ("spectral better" if diff < 0 else
                                                           "neural better")
            out.append({key: k, "spectral": s["model"], "fit time ratio (neural/spectral)":
                        nn["fit (s)"] / s["fit (s)"], "energy spectral": s["energy"],
                        "energy neural": nn["energy"], "SW2 spectral": s["SW2"],
                        "SW2 neural": nn["SW2"], "energy noise": noise, "verdict": verdict})
    return out


def _section_markdown(name: str, section: dict[str, Any]) -> str:
    parts = []
    for key, rows in section.items():
        if isinstance(rows, list) and rows:
            title = "fit time and quality, spectral vs neural" if key == "ratios" else key
            parts.append(f"### {name}: {title}\n\n{markdown_table(rows)}\n")
    return "\n".join(parts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or 1)
    cfg = BenchConfig(**(QUICK if args.quick else {}))
    if getattr(args, "neural_steps", None):
        cfg.neural_steps = args.neural_steps
    sections = list(getattr(args, "sections", ALL_SECTIONS))
    out = Path(args.out) / ("quick" if args.quick else "")  # quick beside the full results
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("spectral_quick.json" if args.quick else "spectral.json")
    res: dict[str, Any] = {}
    if path.exists() and set(sections) != set(ALL_SECTIONS):  # a partial rerun: merge
        try:
            res = json.loads(path.read_text())
            if not isinstance(res, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(path, [(path, f"unreadable results to merge into ({e})")],
                                  hint="`samplegrad bench spectral` (every section) after "
                                       f"deleting {path}") from None
    res.update({"config": asdict(cfg), "quick": bool(args.quick), "seed": args.seed,
                "threads": torch.get_num_threads()})
    print("config:", asdict(cfg))
    runners = {"gmm": lambda: gmm_section(cfg, args.seed),
               "perturbed": lambda: perturbed_section(cfg, args.seed),
               "phi4": lambda: phi4_section(cfg, args.seed),
               "digits": lambda: digits_section(cfg, args.seed, out),
               "fashion": lambda: fashion_section(cfg, args.seed, out),
               "budget": lambda: budget_section(cfg, args.seed)}
    train_dsm(torch.randn(64, 2), steps=5, show_progress=False)  # warm-up: first-call overheads
    for name in sections:
        if name not in runners:
            raise ValueError(f"unknown section {name!r}; choose from {', '.join(runners)}")
        with Timer() as tm:
            res[name] = runners[name]()
        res[name]["seconds"] = tm.seconds
        group = {"gmm": "d", "perturbed": "delta", "phi4": "target", "digits": "data",
                 "fashion": "data", "budget": None}[name]
        if "quality" in res[name] and group:
            res[name]["ratios"] = _ratios(res[name]["quality"], group)
        print(_section_markdown(name, res[name]))
        write_json(path, res)  # checkpoint after every section
    _plot_errors(res, out, cfg.score_times)
    md = [_section_markdown(n, res[n]) for n in ALL_SECTIONS if n in res]
    (out / ("summary_quick.md" if args.quick else "summary.md")).write_text(
        f"Settings: {asdict(cfg)}\n\n" + "\n".join(md))
    return res
