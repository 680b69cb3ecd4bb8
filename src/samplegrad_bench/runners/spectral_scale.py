"""`samplegrad bench spectral-scale`: spectral score models at scale (matrix-free CG solves).

Sections (docs/benchmarks/spectral_scale.md), each measured in one process:

1. ``scale``: fits on Fashion-MNIST in 64 / 128 / 256 principal components and on the raw
   784 pixels with structured bases (every coordinate alone up to degree D, products on chosen
   pairs), solved by conjugate gradients without forming ``A(t)``: wall and CPU fit time,
   peak resident memory, basis size ``K``, stored terms, CG iterations, and the held-out
   score quality (the Fisher-divergence gain over the ``N(0, I)`` reference, estimated by
   denoising score matching on test images).
2. ``images``: samples in pixel space (PCA models lifted back, the 784-pixel model directly)
   against a neural DSM trained for the same wall-clock time; sample grid PNG and the
   Frechet distance in the features of a Fashion-MNIST classifier trained here
   (:func:`samplegrad_bench.tasks.fashion.fd_classifier`).
3. ``accuracy``: Gaussian mixtures in d = 5, 10, 20: relative score error of neural DSM at
   growing step budgets, of the spectral fit, and of the hybrid (spectral base + a residual
   network trained for a fifth of the DSM's time), with the time ratios.

``--quick`` (CI) runs every section on synthetic data in seconds (no Fashion-MNIST needed: the
image sections use a small synthetic "image" set and a PCA-feature Frechet distance).
Results: one ``spectral_scale_SECTION.json`` per section in ``runs/spectral-scale/``
(``--publish``: ``docs/results/spectral-scale/``), rewritten after every row; a rerun resumes
from them (``--fresh`` starts the chosen sections over), plus ``summary.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from samplegrad.spectral import (
    Affine,
    HermiteBasis,
    fit,
    random_mixture,
    relative_score_error,
    sample,
    train_dsm,
)
from samplegrad.spectral.hybrid import train_residual
from samplegrad_bench import paths
from samplegrad_bench._args import comma_list
from samplegrad_bench._common import markdown_table, progress, pyplot, save_figure, write_json

SECTIONS = ("scale", "images", "accuracy")


@dataclass
class ScaleConfig:
    """Settings of one run (``--quick`` replaces them by :data:`QUICK`)."""

    n_train: int = 20000
    n_test: int = 2000
    side: int = 28
    # (name, latent dim (0: raw pixels), degree, pairs among the top-k coords, local radius)
    models: tuple = (("PCA-64 additive", 64, 3, 0, 0),
                     ("PCA-64 pairs top-16", 64, 3, 16, 0),
                     ("PCA-64 all pairs", 64, 3, 64, 0),
                     ("PCA-128 pairs top-48", 128, 3, 48, 0),
                     ("PCA-256 pairs top-48", 256, 3, 48, 0),
                     ("pixels-784 local pairs", 0, 3, 0, 1))
    ridge: float = 1e-6
    cg_tol: float = 1e-6
    n_times: int = 16
    fisher_times: tuple = (0.01, 0.1, 0.5)
    image_models: tuple = ("PCA-64 all pairs", "PCA-256 pairs top-48", "pixels-784 local pairs")
    n_images: int = 1000
    sample_steps: int = 60
    dsm_pcs: int = 64
    gmm_dims: tuple = (5, 10, 20)
    gmm_train: int = 4000
    gmm_eval: int = 2000
    score_times: tuple = (0.01, 0.1, 0.5, 1.0)
    dsm_steps: tuple = (1000, 2000, 4000)
    spectral_degree: dict | None = None  # d -> degree (default 3)
    hybrid_fraction: float = 0.2       # hybrid time budget: this fraction of the best DSM's
    hybrid_t_max: float = 1.0          # residual trained on t in [1e-3, this] only
    hybrid_batch: int = 512
    hybrid_lr: float = 5e-3


QUICK = dict(n_train=1500, n_test=300, side=6,
             models=(("PCA-8 additive", 8, 3, 0, 0), ("PCA-8 all pairs", 8, 3, 8, 0),
                     ("pixels-36 local pairs", 0, 3, 0, 1)),
             n_times=6, fisher_times=(0.1,), image_models=("PCA-8 all pairs",
                                                           "pixels-36 local pairs"),
             n_images=200, sample_steps=15, dsm_pcs=8, gmm_dims=(3,), gmm_train=1500,
             gmm_eval=400, score_times=(0.01, 0.1), dsm_steps=(40, 80))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sections", type=comma_list(choices=SECTIONS), default=list(SECTIONS),
                   metavar="NAME,...", help="comma list of " + ",".join(SECTIONS))
    p.add_argument("--fresh", action="store_true",
                   help="ignore the results of an earlier run (default: resume from them)")


# ---- measuring ------------------------------------------------------------------------
def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    """Peak resident memory of this process in MiB (since the last reset, where supported)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return math.nan


# ---- data -----------------------------------------------------------------------------
def _synthetic_images(n: int, side: int, seed: int) -> torch.Tensor:
    """Smooth random blobs on a ``side x side`` grid in [-1, 1] (the quick run's images)."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.linspace(-1, 1, side, dtype=torch.float64, device="cpu")
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    cx, cy = 0.5 * torch.randn(2, n, 1, 1, generator=g, dtype=torch.float64, device="cpu")
    w = 0.3 + 0.3 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64, device="cpu")
    img = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w ** 2))
    img = img + 0.05 * torch.randn(img.shape, generator=g, dtype=torch.float64, device="cpu")
    return (2 * img - 1).clamp(-1, 1).reshape(n, side * side)


def _images(cfg: ScaleConfig, quick: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                  str]:
    """Train and test images ``(N, side^2)`` float64 in [-1, 1] and the data's name."""
    if quick:
        return (_synthetic_images(cfg.n_train, cfg.side, seed),
                _synthetic_images(cfg.n_test, cfg.side, seed + 1), "synthetic blobs")
    from samplegrad_bench.data import load_idx_dataset

    train, _ = load_idx_dataset("train")
    test, _ = load_idx_dataset("test")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return ((train[perm[:cfg.n_train]].to(torch.float64) * 2 - 1),
            test[:cfg.n_test].to(torch.float64) * 2 - 1, "Fashion-MNIST")


def local_pairs(side: int, radius: int = 1) -> torch.Tensor:
    """Pixel pairs ``(P, 2)`` of a ``side x side`` grid at Chebyshev distance ``<= radius``."""
    idx = torch.arange(side * side, device="cpu").view(side, side)
    out = []
    for di in range(0, radius + 1):
        for dj in range(-radius, radius + 1):
            if di == 0 and dj <= 0:
                continue
            a = idx[:side - di, max(0, -dj):side - max(0, dj)]
            b = idx[di:, max(0, dj):side - max(0, -dj)]
            out.append(torch.stack([a.reshape(-1), b.reshape(-1)], 1))
    return torch.cat(out)


def _basis(spec: tuple, dim: int, side: int) -> HermiteBasis:
    _, _, degree, top, radius = spec
    if radius:
        return HermiteBasis.structured(dim, degree, pairs=local_pairs(side, radius))
    top = min(top, dim)
    pairs = torch.combinations(torch.arange(top, device="cpu"), 2) if top >= 2 else None
    return HermiteBasis.structured(dim, degree, pairs=pairs)


def _fit_spec(cfg: ScaleConfig, spec: tuple, train: torch.Tensor):
    dim = spec[1] or train.shape[1]
    kw = dict(whiten="pca", n_components=dim) if spec[1] else dict(whiten="zca")
    basis = _basis(spec, dim, cfg.side)
    return fit(train, basis=basis, solver="cg", ridge=cfg.ridge, cg_tol=cfg.cg_tol,
               n_times=cfg.n_times, t_min=1e-3, t_max=10.0, **kw)


def fisher_gain(model, test: torch.Tensor, t: float, seed: int) -> float:
    """Held-out Fisher-divergence gain over the ``N(0, I)`` reference, per latent dimension:
    ``(E|s_ref - s*|^2 - E|s - s*|^2) / k`` estimated by denoising score matching
    (``E|s(y_t) + z / sigma|^2`` differs from ``E|s - s*|^2`` by a constant); > 0: better
    than the reference."""
    g = torch.Generator().manual_seed(seed)
    y0 = model.affine.encode(test.to(torch.float64))
    z = torch.randn(y0.shape, generator=g, dtype=torch.float64, device=y0.device)
    s, sig = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    yt = s * y0 + sig * z
    ref = (-yt + z / sig).pow(2).sum(1).mean()
    got = (model.latent_score(yt, t).to(torch.float64) + z / sig).pow(2).sum(1).mean()
    return float((ref - got) / y0.shape[1])


# ---- 1. scale ---------------------------------------------------------------------------
def scale_section(cfg: ScaleConfig, res: dict, save, quick: bool, seed: int,
                  models: dict) -> None:
    train, test, name = _images(cfg, quick, seed)
    rows = res.setdefault("scale", {}).setdefault("rows", [])
    done = {r["model"] for r in rows}
    for spec in progress(cfg.models, desc="scale fits"):
        if spec[0] in done and spec[0] not in cfg.image_models:
            continue
        exact_peak = _reset_peak()
        load0, cpu0, t0 = _load(), _cpu(), time.perf_counter()
        m = _fit_spec(cfg, spec, train)
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        models[spec[0]] = m
        if spec[0] in done:
            continue
        info = m.info
        row = {"model": spec[0], "data": name, "d": m.basis.dim, "degree": spec[2],
               "K": m.basis.size, "n train": int(train.shape[0]),
               "stored terms": info["n_terms"], "moments": info["n_moments"],
               "moments (s)": info["moments_seconds"], "solve (s)": info["solve_seconds"],
               "fit wall (s)": wall, "fit CPU (s)": cpu,
               "peak RSS (MiB)": _peak_mib(), "peak is per fit": exact_peak,
               "CG iters (t_min)": info["cg_iterations"][0],
               "CG iters (total)": sum(info["cg_iterations"]),
               "load at start": load0, "load at end": _load()}
        for t in cfg.fisher_times:
            row[f"Fisher gain t={t}"] = fisher_gain(m, test, t, seed)
        rows.append(row)
        print(markdown_table([row]))
        save()


# ---- 2. images --------------------------------------------------------------------------
def _fd(quick: bool):
    """``(fd(samples, reference), label)``: the classifier FD on Fashion-MNIST, else a
    Frechet distance of 32 principal components of the reference (quick runs)."""
    if not quick:
        try:
            from samplegrad_bench.tasks.fashion import fashion_classifier, fd_classifier

            clf = fashion_classifier()

            def fd(x: torch.Tensor, ref: torch.Tensor) -> float:
                return float(fd_classifier(_as_img(x), _as_img(ref), clf))

            return fd, f"FD-classifier (FashionCNN, test accuracy {clf.accuracy:.3f})"
        except (ImportError, AttributeError, FileNotFoundError) as e:
            print(f"[spectral-scale] FD-classifier unavailable ({e}); PCA-feature FD instead")

    def fd_pca(x: torch.Tensor, ref: torch.Tensor) -> float:
        pca = Affine.fit(ref, "pca", n_components=min(32, ref.shape[1]))
        a, b = pca.encode(x.to(torch.float64)), pca.encode(ref.to(torch.float64))
        return _frechet(a, b)

    return fd_pca, "FD in 32 whitened principal components of the test images"


def _as_img(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float32).clamp(-1, 1).view(-1, 1, 28, 28)


def _frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    ev, V = torch.linalg.eigh(ca)
    sa = V @ torch.diag(ev.clamp_min(0).sqrt()) @ V.T
    cross = torch.linalg.eigvalsh(sa @ cb @ sa).clamp_min(0).sqrt().sum()
    return float((ma - mb).pow(2).sum() + ca.trace() + cb.trace() - 2 * cross)


def images_section(cfg: ScaleConfig, res: dict, save, quick: bool, seed: int, models: dict,
                   out: Path) -> None:
    train, test, name = _images(cfg, quick, seed)
    fd, label = _fd(quick)
    sec = res.setdefault("images", {})
    sec["metric"] = label
    rows = sec.setdefault("rows", [])
    done = {r["model"] for r in rows}
    # the grid's samples of finished rows, for a resumed run (a cache, not a result)
    grid_path = (out if quick else paths.cache_dir("spectral-scale")) / (
        "grid_samples_quick.pt" if quick else "grid_samples.pt")
    grid: dict[str, torch.Tensor] = {"test images": test[:16]}
    if grid_path.exists() and not quick:  # samples of the rows done by an earlier run
        grid.update(torch.load(grid_path, weights_only=True))
    ref = test[:cfg.n_images]
    if "train images (floor)" not in done:
        rows.append({"model": "train images (floor)", "fit wall (s)": 0.0,
                     "sample (s)": 0.0, "FD": fd(train[:cfg.n_images], ref)})
    scale_rows = res.get("scale", {}).get("rows", [])
    fit_times = {r["model"]: r["fit wall (s)"] for r in scale_rows}
    fit_cpu = {r["model"]: r["fit CPU (s)"] for r in scale_rows}
    for mname in progress(cfg.image_models, desc="image samples"):
        if mname in done and mname in grid:
            continue
        if mname not in models:
            spec = next(s for s in cfg.models if s[0] == mname)
            t0, c0 = time.perf_counter(), _cpu()
            models[mname] = _fit_spec(cfg, spec, train)
            fit_times.setdefault(mname, time.perf_counter() - t0)
            fit_cpu.setdefault(mname, _cpu() - c0)
        t0 = time.perf_counter()
        x = sample(models[mname], cfg.n_images, n_steps=cfg.sample_steps, t_max=8.0,
                   t_min=1e-3, generator=torch.Generator().manual_seed(seed),
                   show_progress=False)
        secs = time.perf_counter() - t0
        grid[mname] = x[:16].clone()
        if mname not in done:
            rows.append({"model": mname, "fit wall (s)": fit_times[mname],
                         "fit CPU (s)": fit_cpu[mname], "sample (s)": secs,
                         "FD": fd(x, ref) if torch.isfinite(x).all() else math.inf})
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v for k, v in grid.items() if k != "test images"}, grid_path)
            save()
    # neural DSM in PCA space, trained for the CPU time of the first image model's fit (CPU
    # time: the wall-clock of a shared machine depends on the load)
    budget = fit_cpu[cfg.image_models[0]]
    pca = Affine.fit(train, "pca", n_components=cfg.dsm_pcs)
    y = pca.encode(train)
    train_dsm(y, steps=5, show_progress=False)  # first-call overheads out of the calibration
    c0 = _cpu()
    train_dsm(y, steps=50, show_progress=False)
    per_step = (_cpu() - c0) / 50
    steps = max(20, int(budget / per_step))
    dname = f"neural DSM PCA-{cfg.dsm_pcs} (equal CPU time, {steps} steps)"
    c0 = _cpu()
    nn_model = train_dsm(y, steps=steps, t_min=1e-3, t_max=10.0, show_progress=not quick)
    nn_cpu = _cpu() - c0
    t0 = time.perf_counter()
    xl = sample(nn_model, cfg.n_images, n_steps=cfg.sample_steps, t_max=8.0, t_min=1e-3,
                generator=torch.Generator().manual_seed(seed), show_progress=False)
    secs = time.perf_counter() - t0
    x = pca.decode(xl)
    grid[dname] = x[:16]
    rows[:] = [r for r in rows if not r["model"].startswith("neural DSM")]
    rows.append({"model": dname, "fit wall (s)": nn_model.info["fit_seconds"],
                 "fit CPU (s)": nn_cpu, "sample (s)": secs,
                 "FD": fd(x, ref) if torch.isfinite(x).all() else math.inf})
    save()
    _plot_grid(grid, cfg.side, out / "samples.png", f"{name}: samples in pixel space")


# ---- 3. accuracy ------------------------------------------------------------------------
def accuracy_section(cfg: ScaleConfig, res: dict, save, seed: int) -> None:
    sec = res.setdefault("accuracy", {})
    rows = sec.setdefault("rows", [])
    goals = sec.setdefault("goal", [])
    done = {r["d"] for r in goals}
    for d in progress(cfg.gmm_dims, desc="mixture dims"):
        if d in done:
            continue
        gm = random_mixture(d, 3, 1.0, seed=seed + d)
        g = torch.Generator().manual_seed(seed + 100 + d)
        data = gm.sample(cfg.gmm_train, g)
        evals = {t: gm.ou_marginal(t).sample(cfg.gmm_eval, g) for t in cfg.score_times}

        def errs(m, evals=evals, gm=gm) -> dict:
            return {f"err t={t}": relative_score_error(m.score(x, t), gm.ou_score(x, t))
                    for t, x in evals.items()}

        new = []
        for steps in cfg.dsm_steps:
            c0 = _cpu()
            m = train_dsm(data, steps=steps, t_min=1e-3, t_max=10.0, seed=seed,
                          show_progress=False)
            new.append({"d": d, "model": f"neural DSM {steps} steps",
                        "fit wall (s)": m.info["fit_seconds"], "fit CPU (s)": _cpu() - c0,
                        **errs(m)})
        key = f"err t={cfg.score_times[0]}"
        best = min(new, key=lambda r: r[key])
        degree = (cfg.spectral_degree or {}).get(d, 3)
        c0 = _cpu()
        spec = fit(data, degree=degree, n_times=24, t_min=1e-3, t_max=10.0, ridge=1e-8)
        spec_cpu = _cpu() - c0
        new.append({"d": d, "model": f"spectral D={degree} (K={spec.basis.size})",
                    "fit wall (s)": spec.info["fit_seconds"], "fit CPU (s)": spec_cpu,
                    **errs(spec)})
        # the budget in CPU seconds (the machine is shared: wall-clock is load-dependent)
        per_step = best["fit CPU (s)"] / int(best["model"].split()[2])
        budget = cfg.hybrid_fraction * best["fit CPU (s)"] - spec_cpu
        rsteps = max(10, int(budget / (3.0 * per_step)))  # base score + batch 512
        c0 = _cpu()
        hyb = train_residual(spec, data, steps=rsteps, seed=seed, t_max=cfg.hybrid_t_max,
                             batch=cfg.hybrid_batch, lr=cfg.hybrid_lr, show_progress=False)
        hrow = {"d": d, "model": f"hybrid: spectral + residual {rsteps} steps",
                "fit wall (s)": hyb.info["fit_seconds"],
                "fit CPU (s)": _cpu() - c0 + spec_cpu, **errs(hyb)}
        new.append(hrow)
        rows.extend(new)
        goals.append({"d": d, "best DSM": best["model"], "DSM err": best[key],
                      "DSM CPU (s)": best["fit CPU (s)"], "spectral err": new[-2][key],
                      "spectral CPU (s)": spec_cpu, "hybrid err": hrow[key],
                      "hybrid CPU (s)": hrow["fit CPU (s)"],
                      "CPU ratio spectral/DSM": spec_cpu / best["fit CPU (s)"],
                      "CPU ratio hybrid/DSM": hrow["fit CPU (s)"] / best["fit CPU (s)"],
                      "err ≤ DSM": min(hrow[key], new[-2][key]) <= best[key],
                      "time ≤ 1/5": hrow["fit CPU (s)"] <= 0.2 * best["fit CPU (s)"],
                      "DSM still improving": best is new[len(cfg.dsm_steps) - 1]})
        print(markdown_table(new))
        save()


# ---- plots ------------------------------------------------------------------------------
def _plot_grid(images: dict[str, torch.Tensor], side: int, path: Path, title: str) -> None:
    plt = pyplot()
    n = 8
    fig, axes = plt.subplots(len(images), 1, figsize=(n * 0.9, len(images) * 1.25 + 0.3))
    for ax, (label, imgs) in zip(axes, images.items()):
        rows = [torch.cat([imgs[r * n + i].view(side, side) for i in range(n)], 1)
                for r in range(min(2, len(imgs) // n))]
        ax.imshow(torch.cat(rows, 0).clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=90)


def _plot_scale(res: dict, out: Path, times: tuple) -> None:
    rows = res.get("scale", {}).get("rows", [])
    if not rows:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r in rows:
        for ax, key in zip(axes, ("fit CPU (s)", "peak RSS (MiB)",
                                  f"Fisher gain t={times[min(1, len(times) - 1)]}")):
            ax.scatter(r["K"], r[key], s=18)
            ax.annotate(r["model"], (r["K"], r[key]), fontsize=6)
    for ax, key in zip(axes, ("fit CPU time (s, one thread)", "peak RSS (MiB)",
                              f"held-out Fisher gain per dim, t={times[min(1, len(times) - 1)]}")):
        ax.set(xscale="log", xlabel="basis size K", ylabel=key)
    axes[0].set_yscale("log")
    save_figure(fig, out / "scale.png", dpi=100)


# ---- runner -----------------------------------------------------------------------------
def _section_path(out: Path, name: str, quick: bool) -> Path:
    return out / f"spectral_scale_{name}{'_quick' if quick else ''}.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Each section keeps its own JSON (so sections can run in parallel processes and resume);
    ``summary.md`` and the plots are rebuilt from every section file present."""
    torch.set_num_threads(args.threads or 1)
    cfg = ScaleConfig(**(QUICK if args.quick else {}))
    out = Path(args.out) / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    sections = list(getattr(args, "sections", SECTIONS))
    meta = {"config": asdict(cfg), "quick": bool(args.quick), "seed": args.seed,
            "threads": torch.get_num_threads()}
    res: dict[str, Any] = {}
    for name in SECTIONS:
        path = _section_path(out, name, args.quick)
        fresh = getattr(args, "fresh", False) and name in sections
        if path.exists() and not fresh and not args.quick:
            try:
                res[name] = json.loads(path.read_text())[name]
                if name in sections:
                    print(f"[spectral-scale] {name}: resuming from {path} (--fresh: start over)")
            except (ValueError, UnicodeDecodeError, KeyError, TypeError):
                res.pop(name, None)

    def saver(name: str):
        return lambda: write_json(_section_path(out, name, args.quick),
                                  {**meta, name: res.get(name, {})})

    models: dict = {}
    if "scale" in sections:
        scale_section(cfg, res, saver("scale"), args.quick, args.seed, models)
    if "images" in sections:
        images_section(cfg, res, saver("images"), args.quick, args.seed, models, out)
    if "accuracy" in sections:
        accuracy_section(cfg, res, saver("accuracy"), args.seed)
    for name in sections:
        saver(name)()
    for name in set(SECTIONS) - set(sections):  # written meanwhile by another process
        path = _section_path(out, name, args.quick)
        try:
            res[name] = json.loads(path.read_text())[name]
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
            pass
    _plot_scale(res, out, cfg.fisher_times)
    md = [f"Settings: {asdict(cfg)}\n"]
    for name in SECTIONS:
        for key, rows in res.get(name, {}).items():
            if isinstance(rows, list) and rows:
                md.append(f"### {name}: {key}\n\n{markdown_table(rows)}\n")
            elif isinstance(rows, str):
                md.append(f"{name} {key}: {rows}\n")
    (out / ("summary_quick.md" if args.quick else "summary.md")).write_text("\n".join(md))
    print("\n".join(md))
    return res
