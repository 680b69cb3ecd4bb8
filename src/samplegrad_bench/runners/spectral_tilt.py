"""`samplegrad bench spectral-tilt`: reward tilting of spectral score models in one solve, against
Implicit Diffusion finetuning of the same coefficients and of a small MLP DDPM.

Objective (every method, the same reward ``R`` and temperature ``lam``):
``max E[R] - lam KL``; its optimum is ``p*(x) ∝ p_0(x) exp(R(x) / lam)``.

* ``tilt``: :func:`samplegrad.spectral.tilt`, the spectral fit with importance-weighted data
  averages (one linear solve per grid time, no optimizer, no sampling);
* ``implicit-spectral``: the coefficients ``a(t_j)`` of the untilted spectral model at the
  T sampler steps (:class:`samplegrad.spectral.SpectralEps`), finetuned with the Implicit
  Diffusion queue (``samplegrad.implicit.finetune``, Adam, ``kl_weight = lam``);
* ``implicit-ddpm``: the same queue on a small MLP noise model (``EpsMLP``) trained here by
  DDPM on the same data (in the same latent coordinates).

All models are sampled by the same T-step DDPM ancestral sampler on the same noise (a
spectral model through ``SpectralEps``), so they differ only in their scores. Reported:
mean reward of the samples; path KL (the T-step sampler's path KL to its own untilted
model, what the finetunes penalize; an upper bound on the KL of the samples' law to the
base model's); wall-clock of the method (tilt: the solve; finetunes: the theta steps);
on Gaussian mixtures (linear reward ``R(x) = a.x``, tilted law closed-form) also the
relative score error against the true tilted ``p_t`` at the sampler's times and the
energy distance of the samples to exact tilted samples. Sections:

1. ``gmm``: random 3-component mixtures in d = 2 and 5;
2. ``digits``: 8x8 digits in principal-component space, reward ``log p(3 | x)`` of the
   digit classifier (``tasks.rewards``).

Writes ``spectral_tilt.json`` (``--quick``: ``spectral_tilt_quick.json``), ``summary.md``
and ``reward_vs_kl.png`` (one panel per problem, one curve per method over ``lam``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from samplegrad import spectral
from samplegrad.diffusion import (
    EpsMLP,
    SamplerSchedule,
    ddpm_loss,
    draw_noise,
    linear_alpha_bars,
    sample_path,
    sampling_schedule,
    step_mean,
)
from samplegrad.implicit.finetune import FinetuneConfig, finetune_init, finetune_step
from samplegrad.spectral import GaussianMixture, SpectralEps, random_mixture
from samplegrad_bench._args import comma_list, positive_int
from samplegrad_bench._common import Timer, markdown_table, pyplot, save_figure, write_json

METHODS = ("tilt", "implicit-spectral", "implicit-ddpm")


@dataclass
class BenchConfig:
    """Settings of one run (``--quick`` shrinks every size)."""

    gmm_dims: tuple = (2, 5)
    gmm_degree: dict = None  # type: ignore[assignment]  # d -> degree (set in __post_init__)
    n_train: int = 4000
    n_eval: int = 2000
    gmm_lams: tuple = (0.5, 1.0, 2.0)
    digits_lams: tuple = (1.0, 2.0, 4.0)
    digits_pcs: int = 8
    digits_degree: int = 3
    digit: int = 3
    n_steps: int = 20          # T: DDPM sampler steps (and the queue's populations)
    theta_steps: int = 120     # optimizer steps of each finetune
    pop_size: int = 64
    lr_spectral: float = 0.01
    lr_ddpm: float = 1e-3
    ddpm_steps: int = 2000     # DDPM pretraining steps of the MLP
    ddpm_hidden: int = 128
    score_times: tuple = (0.02, 0.1, 0.5, 1.0)  # nearest sampler times reported

    def __post_init__(self) -> None:
        if self.gmm_degree is None:
            self.gmm_degree = {2: 4, 5: 3}


QUICK = dict(gmm_dims=(2,), n_train=600, n_eval=300, gmm_lams=(1.0,), digits_lams=(2.0,),
             digits_pcs=4, digits_degree=2, n_steps=5, theta_steps=3, pop_size=16,
             ddpm_steps=30, ddpm_hidden=32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sections", type=comma_list(choices=("gmm", "digits")),
                   default=["gmm", "digits"],
                   help="comma-separated: gmm, digits (default both)")
    p.add_argument("--theta-steps", type=positive_int, default=None,
                   help="optimizer steps of each finetune (default 120; quick 3)")


# ---------------------------------------------------------------- pieces
def tilted_mixture(gm: GaussianMixture, a: Tensor, lam: float) -> GaussianMixture:
    """``p_0 exp(a.x / lam)`` for a mixture ``p_0``: means ``+ S_c a / lam``, weights
    ``∝ pi_c exp(a.mu_c / lam + a.S_c a / (2 lam^2))``."""
    sa = gm.covs @ a
    logw = gm.weights.log() + gm.means @ a / lam + (sa @ a) / (2 * lam**2)
    return GaussianMixture(torch.softmax(logw, 0), gm.means + sa / lam, gm.covs)


def true_tilt_stats(gm: GaussianMixture, a: Tensor, lam: float) -> tuple[float, float]:
    """``E_{p*}[a.x]`` and ``KL(p* || p_0) = E_{p*}[R] / lam - log Z`` in closed form."""
    sa = gm.covs @ a
    log_z = torch.logsumexp(gm.weights.log() + gm.means @ a / lam + (sa @ a) / (2 * lam**2), 0)
    tm = tilted_mixture(gm, a, lam)
    er = float((tm.weights * (tm.means @ a)).sum())
    return er, er / lam - float(log_z)


def _sched(cfg: BenchConfig) -> SamplerSchedule:
    """T steps of the 1000-step linear schedule at geometrically spaced timesteps (1 .. 999).

    Not the "leading" stride (0, 1000/T, ...): there the second step's posterior variance
    is ``~(1 - alpha_bar_0)`` while its ``beta`` is large, so the path KL of any change of
    the score near ``t = 0.05`` is multiplied by ~``(1 - alpha_bar_1) / (1 - alpha_bar_0)``
    (hundreds): geometric spacing keeps that ratio ~``999^(1/(T-1))`` and the path KL close
    to its continuous-time (Girsanov) value."""
    ts = torch.logspace(0, math.log10(999), cfg.n_steps, dtype=torch.float64).round().long()
    for i in range(1, len(ts)):  # strictly increasing integers
        ts[i] = max(int(ts[i]), int(ts[i - 1]) + 1)
    return sampling_schedule(linear_alpha_bars(1000), dtype=torch.float64, timesteps=ts)


def train_mlp(y: Tensor, cfg: BenchConfig, seed: int) -> torch.nn.Module:
    """A small DDPM noise model on latent data ``y`` (float64), Adam, ``cfg.ddpm_steps``."""
    torch.manual_seed(seed)
    model = EpsMLP(dim=y.shape[1], hidden=cfg.ddpm_hidden, n_blocks=2, temb_dim=32).double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.ddpm_steps)
    ab = linear_alpha_bars(1000).to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    for _ in range(cfg.ddpm_steps):
        idx = torch.randint(0, y.shape[0], (256,), generator=g)
        loss = ddpm_loss(model, y[idx], ab, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def finetune(model: torch.nn.Module, sched: SamplerSchedule, reward_fn, lam: float, lr: float,
             cfg: BenchConfig, seed: int, dim: int) -> tuple[torch.nn.Module, float, list]:
    """Implicit Diffusion queue on a copy of ``model``: ``(finetuned, seconds, trace)``."""
    m = copy.deepcopy(model)
    fc = FinetuneConfig(pop_size=cfg.pop_size, lr=lr, kl_weight=lam, seed=seed)
    trace = []
    with Timer() as tm:
        state = finetune_init(m, sched, fc, shape=(dim,))
        for _ in range(cfg.theta_steps):
            state, info = finetune_step(state, m, sched, reward_fn, fc)
            trace.append({"reward": info["reward"], "kl": info["kl"]})
    return m, tm.seconds, trace


def path_kl_between(model: torch.nn.Module, base: torch.nn.Module, path: Tensor,
                    sched: SamplerSchedule) -> Tensor:
    """Per-sample path KL integrand ``sum_j |mu_model - mu_base|^2 / (2 sigma_j^2)`` along
    ``path`` ``(T+1, N, d)`` drawn from ``model`` (any two noise models): ``(N,)``."""
    total = path.new_zeros(path.shape[1])
    with torch.no_grad():
        for j in range(sched.n_steps):
            diff = step_mean(model, path[j + 1], j, sched) - step_mean(base, path[j + 1], j,
                                                                       sched)
            total += diff.pow(2).sum(1) / (2 * float(sched.sigma[j]) ** 2)
    return total


def evaluate(model: torch.nn.Module, base: torch.nn.Module, sched: SamplerSchedule,
             noise: Tensor, reward_fn) -> tuple[dict, Tensor]:
    """Mean reward and path KL to ``base`` of ``model``'s samples on ``noise``; returns the
    latent samples too."""
    with torch.no_grad():
        path = sample_path(model, noise, sched)
        r = reward_fn(path[0])
    kl = path_kl_between(model, base, path, sched)
    return {"reward": float(r.mean()), "reward_se": float(r.std() / math.sqrt(r.numel())),
            "path KL": float(kl.mean())}, path[0]


def _score_errors(model: torch.nn.Module, sched: SamplerSchedule, truth: GaussianMixture,
                  affine, n: int, seed: int, spectral_model: bool) -> dict[str, float]:
    """Relative score error (data space) against ``truth``'s OU marginals at every sampler
    time: the mean over the T times and the errors at the times nearest ``score_times``."""
    g = torch.Generator().manual_seed(seed)
    errs = []
    for j in range(sched.n_steps):
        ab = float(sched.alpha_bar[j])
        t = -0.5 * math.log(ab)
        x = truth.ou_marginal(t).sample(n, g)
        y = affine.encode(x)
        tau = sched.timesteps[j].expand(n)
        with torch.no_grad():
            if spectral_model:
                s = model.latent_score(y, tau)
            else:
                s = -model(y, tau) / math.sqrt(1 - ab)
        errs.append((t, spectral.relative_score_error(affine.score_to_data(s),
                                                      truth.ou_score(x, t))))
    return {"t": [t for t, _ in errs], "err": [e for _, e in errs]}


def _pick(errs: dict, times: tuple) -> dict[str, float]:
    out = {"err mean": sum(errs["err"]) / len(errs["err"])}
    for t in times:
        j = min(range(len(errs["t"])), key=lambda i: abs(math.log(errs["t"][i] / t)))
        out[f"err t={errs['t'][j]:.2g}"] = errs["err"][j]
    return out


# ---------------------------------------------------------------- sections
def gmm_problem(cfg: BenchConfig, d: int, seed: int) -> dict[str, Any]:
    gm = random_mixture(d, 3, 1.0, seed=seed + d)
    g = torch.Generator().manual_seed(seed + 100 + d)
    data = gm.sample(cfg.n_train, g)
    a = torch.ones(d, dtype=torch.float64) / math.sqrt(d)
    if d == 2:
        a = torch.tensor([1.0, 0.5], dtype=torch.float64)
    sched = _sched(cfg)
    base = spectral.fit(data, degree=cfg.gmm_degree.get(d, 3))
    affine = base.affine
    y = affine.encode(data)
    eps_base = SpectralEps(base, sched)
    with Timer() as tm:
        mlp = train_mlp(y, cfg, seed)
    ddpm_train_s = tm.seconds
    noise = draw_noise(sched, cfg.n_eval, (d,), torch.Generator().manual_seed(seed + 7),
                       torch.float64)
    a_lat = a  # reward on data: R(x) = a.x, x = decode(y)

    def reward_fn(yy: Tensor) -> Tensor:
        return affine.decode(yy) @ a_lat

    rows, curves = [], []
    for name, m, b in (("base spectral", eps_base, eps_base), ("base ddpm", mlp, mlp)):
        ev, _ = evaluate(m, b, sched, noise, reward_fn)
        rows.append({"d": d, "lam": None, "method": name, "seconds": 0.0, **ev})
    for lam in cfg.gmm_lams:
        truth = tilted_mixture(gm, a, lam)
        er, kl = true_tilt_stats(gm, a, lam)
        ref = truth.sample(cfg.n_eval, g)
        floor = spectral.energy_distance(truth.sample(cfg.n_eval, g), ref)
        rows.append({"d": d, "lam": lam, "method": "truth (marginal KL)", "seconds": 0.0,
                     "reward": er, "path KL": kl, "energy": floor})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            tilted, info = spectral.tilt(base, lambda x: x @ a, lam, data=data)
        models = {"tilt": (SpectralEps(tilted, sched), eps_base, info["seconds"], True, None)}
        ft, secs, tr = finetune(eps_base, sched, reward_fn, lam, cfg.lr_spectral, cfg, seed, d)
        models["implicit-spectral"] = (ft, eps_base, secs, True, tr)
        ft, secs, tr = finetune(mlp, sched, reward_fn, lam, cfg.lr_ddpm, cfg, seed, d)
        models["implicit-ddpm"] = (ft, mlp, secs, False, tr)
        for method, (m, b, secs, is_spec, tr) in models.items():
            ev, ys = evaluate(m, b, sched, noise, reward_fn)
            errs = _score_errors(m, sched, truth, affine, min(cfg.n_eval, 1000), seed + 3,
                                 is_spec)
            row = {"d": d, "lam": lam, "method": method, "seconds": secs, **ev,
                   "energy": spectral.energy_distance(affine.decode(ys), ref),
                   **_pick(errs, cfg.score_times)}
            if method == "tilt":
                row.update(ESS=info["ess"], ess_fraction=info["ess_fraction"],
                           kl_is=info["kl"], warned=bool(caught))
            rows.append(row)
            curves.append({"d": d, "lam": lam, "method": method, "score_errors": errs,
                           "trace": tr})
        # the untilted models against the tilted truth: the error the tilt removes
        for name, m, is_spec in (("base spectral", eps_base, True), ("base ddpm", mlp, False)):
            errs = _score_errors(m, sched, truth, affine, min(cfg.n_eval, 1000), seed + 3,
                                 is_spec)
            rows.append({"d": d, "lam": lam, "method": f"{name} vs tilted truth",
                         "seconds": 0.0, **_pick(errs, cfg.score_times)})
    return {"rows": rows, "curves": curves, "ddpm_train_seconds": ddpm_train_s,
            "basis_size": base.basis.size, "reward_direction": a.tolist()}


def digits_section(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    from samplegrad_bench.data import load_digits
    from samplegrad_bench.tasks.rewards import digit_classifier, digit_log_prob

    train = load_digits("train")[0].to(torch.float64)
    clf = digit_classifier()
    for p in clf.parameters():
        p.requires_grad_(False)
    pca = spectral.Affine.fit(train, "pca", n_components=cfg.digits_pcs)
    y = pca.encode(train)
    base = spectral.fit(y, degree=cfg.digits_degree)  # data = PCA coordinates (whitened)
    sched = _sched(cfg)
    eps_base = SpectralEps(base, sched)
    k = cfg.digits_pcs

    def to_image(latent: Tensor) -> Tensor:
        return pca.decode(base.affine.decode(latent)).clamp(0, 1)

    def reward_fn(latent: Tensor) -> Tensor:
        return digit_log_prob(clf, to_image(latent).float(), cfg.digit).to(latent.dtype)

    with Timer() as tm:
        mlp = train_mlp(base.affine.encode(y), cfg, seed)
    ddpm_train_s = tm.seconds
    noise = draw_noise(sched, cfg.n_eval, (k,), torch.Generator().manual_seed(seed + 7),
                       torch.float64)

    def hit_rate(latent: Tensor) -> float:
        with torch.no_grad():
            return float((clf(to_image(latent).float()).argmax(1) == cfg.digit).double().mean())

    data_r = digit_log_prob(clf, pca.decode(y).clamp(0, 1).float(), cfg.digit).double()
    rows = [{"lam": None, "method": "data (PCA-projected)", "seconds": 0.0,
             "reward": float(data_r.mean()),
             "p(digit) argmax": float((clf(pca.decode(y).clamp(0, 1).float()).argmax(1)
                                       == cfg.digit).double().mean())}]
    for name, m in (("base spectral", eps_base), ("base ddpm", mlp)):
        ev, ys = evaluate(m, m, sched, noise, reward_fn)
        rows.append({"lam": None, "method": name, "seconds": 0.0, **ev,
                     "p(digit) argmax": hit_rate(ys)})
    curves, images = [], {}
    for lam in cfg.digits_lams:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            tilted, info = spectral.tilt(base, data_r, lam, data=y)
        models = {"tilt": (SpectralEps(tilted, sched), eps_base, info["seconds"], None)}
        ft, secs, tr = finetune(eps_base, sched, reward_fn, lam, cfg.lr_spectral, cfg, seed, k)
        models["implicit-spectral"] = (ft, eps_base, secs, tr)
        ft, secs, tr = finetune(mlp, sched, reward_fn, lam, cfg.lr_ddpm, cfg, seed, k)
        models["implicit-ddpm"] = (ft, mlp, secs, tr)
        for method, (m, b, secs, tr) in models.items():
            ev, ys = evaluate(m, b, sched, noise, reward_fn)
            row = {"lam": lam, "method": method, "seconds": secs, **ev,
                   "p(digit) argmax": hit_rate(ys)}
            if method == "tilt":
                row.update(ESS=info["ess"], ess_fraction=info["ess_fraction"],
                           kl_is=info["kl"], warned=bool(caught))
            rows.append(row)
            curves.append({"lam": lam, "method": method, "trace": tr})
            images[f"{method} lam={lam:g}"] = to_image(ys[:16])
    return {"rows": rows, "curves": curves, "ddpm_train_seconds": ddpm_train_s,
            "basis_size": base.basis.size, "images": images}


# ---------------------------------------------------------------- report
def plot(res: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    panels = [(f"GMM d={d}", [r for r in res["gmm"]["rows"] if r["d"] == d])
              for d in res.get("gmm", {}).get("dims", [])]
    if "digits" in res:
        panels.append((f"digits, log p({res['config']['digit']} | x)", res["digits"]["rows"]))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.8))
    axes = [axes] if not hasattr(axes, "__len__") else list(axes)
    for ax, (title, rows) in zip(axes, panels):
        for method, marker in (("tilt", "o"), ("implicit-spectral", "s"),
                               ("implicit-ddpm", "^"), ("truth (marginal KL)", "*")):
            pts = sorted((r["path KL"], r["reward"], r["lam"]) for r in rows
                         if r["method"] == method and "path KL" in r)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                        label=method, ls="--" if method.startswith("truth") else "-")
                for kl, rew, lam in pts:
                    ax.annotate(f"{lam:g}", (kl, rew), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        for r in rows:
            if r["method"].startswith("base") and "path KL" in r:
                ax.scatter([0.0], [r["reward"]], marker="x", color="k")
        ax.set_xlabel("KL (path KL to own base; truth: marginal)")
        ax.set_ylabel("mean reward")
        ax.set_title(title)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def _table(rows: list[dict], drop: tuple = ()) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in drop]
    return markdown_table(rows, cols)


def _merged(path: Path, res: dict[str, Any]) -> dict[str, Any]:
    """``res`` over the sections already in ``path`` (a run of some sections keeps the others)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if not isinstance(old, dict) or old.get("config") != res["config"]:
        old = {}
    return {**old, **res}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.threads:
        torch.set_num_threads(1)
    cfg = BenchConfig(**(QUICK if args.quick else {}))
    if args.theta_steps:
        cfg.theta_steps = args.theta_steps
    unknown = sorted(set(args.sections) - {"gmm", "digits"})
    if unknown:
        raise ValueError(f"--sections: unknown section {unknown[0]!r}; choose gmm, digits")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    path = out / f"spectral_tilt{suffix}.json"
    res: dict[str, Any] = {"config": json.loads(json.dumps(asdict(cfg), default=str)),
                           "quick": bool(args.quick), "seed": args.seed,
                           "threads": torch.get_num_threads(),
                           "note": "timings measured on a shared machine (5 jobs on 2 cores)"}
    if "gmm" in args.sections:
        rows, curves, extra = [], [], {}
        for d in cfg.gmm_dims:
            part = gmm_problem(cfg, d, args.seed)
            rows += part["rows"]
            curves += part["curves"]
            extra[d] = {k: part[k] for k in ("ddpm_train_seconds", "basis_size",
                                             "reward_direction")}
        res["gmm"] = {"dims": list(cfg.gmm_dims), "rows": rows, "curves": curves,
                      "problems": extra}
        print("### Gaussian mixtures, R(x) = a.x\n\n" + _table(rows))
        res = _merged(path, res)
        write_json(path, res)
    if "digits" in args.sections:
        dig = digits_section(cfg, args.seed)
        images = dig.pop("images")
        res["digits"] = dig
        print(f"### digits ({cfg.digits_pcs} PCs)\n\n" + _table(dig["rows"]))
        _plot_images(images, out / f"digits_samples{suffix}.png")
    res = _merged(path, res)
    write_json(path, res)
    plot(res, out / f"reward_vs_kl{suffix}.png")
    md = [f"Settings: {res['config']}\n"]
    if "gmm" in res:
        md.append("### Gaussian mixtures, R(x) = a.x\n\n" + _table(res["gmm"]["rows"]) + "\n")
    if "digits" in res:
        md.append(f"### digits ({cfg.digits_pcs} PCs), R = log p({cfg.digit} | x)\n\n"
                  + _table(res["digits"]["rows"]) + "\n")
    (out / f"summary{suffix}.md").write_text("\n".join(md))
    return res


def _plot_images(images: dict[str, Tensor], path: Path) -> None:
    plt = pyplot()

    n = len(images)
    fig, axes = plt.subplots(n, 1, figsize=(8, 0.75 * n + 0.3), squeeze=False)
    for ax, (name, img) in zip(axes[:, 0], images.items()):
        row = torch.cat([im.view(8, 8) for im in img], 1)
        ax.imshow(row.numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)
