"""``fit``: a spectral score model from data by one linear solve per time (no optimizer).

Score model (OU forward process, beta = 1, in the latent space of an optional affine map):
``s(y, t) = -y + sum_k a_k(t) grad phi_k(y)`` with ``A(t) a(t) = b(t)`` (:mod:`.system`), or
the leading-order perturbative model ``a_k(t) = e^{-lambda_k t} c_k`` (``method="perturbative"``).
``a(t)`` is solved on a log-spaced time grid at fit time; ``score(x, t)`` interpolates it
linearly in ``log t`` (clamped to the grid), and :meth:`SpectralScoreModel.solve` gives the
exact solution at any ``t`` (``A(t)`` is a cheap weighted sum of precomputed data moments).

Safe extrapolation: the polynomial correction is only estimated where ``p_t`` has mass, and
beyond it a degree >= 3 polynomial score can push samples outward without bound. With
``clamp_sigmas = k > 0`` the correction is evaluated at ``y`` clamped to the box
``[e^{-t} min(data) - k sigma_t, e^{-t} max(data) + k sigma_t]`` (per latent coordinate,
``sigma_t^2 = 1 - e^{-2t}``), which holds all but a ~1e-4 fraction of ``p_t`` per coordinate
for ``k = 4``; the ``-y`` term is never clamped. ``clamp_sigmas = 0`` disables it.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from samplegrad._config import check_choice, check_int, check_real
from samplegrad.spectral._checks import (
    check_count,
    check_points,
    check_time,
    check_time_range,
    check_times_grid,
)
from samplegrad.spectral.affine import Affine
from samplegrad.spectral.basis import HermiteBasis
from samplegrad.spectral.cg import solve_cg
from samplegrad.spectral.system import GramTerms, gram_terms, rhs, solve_system

METHODS = ("linear", "perturbative")
WHITENINGS = ("none", "standardize", "zca", "pca")
SOLVERS = ("auto", "dense", "cg")


@dataclass
class SpectralConfig:
    """Defaults for :func:`fit`."""

    degree: int = 3
    max_active: int = 2
    n_times: int = 24
    t_min: float = 1e-3
    t_max: float = 10.0
    ridge: float = 1e-8          # relative to mean(diag A(t))
    cond_warn: float = 1e10      # warn when cond(A(t_min) + ridge) exceeds this
    method: str = "linear"       # "linear" (full A(t)) | "perturbative" (A = diag(lambda))
    whiten: str = "none"         # "none" | "standardize" | "zca" | "pca": affine map first
    clamp_sigmas: float = 4.0    # safe extrapolation box (module docstring); 0 disables
    n_components: int | None = None  # whiten="pca": keep this many components (None: all)
    solver: str = "auto"         # "dense" (Cholesky) | "cg" (matrix-free) | "auto" (by size)
    dense_max: int = 4096        # solver="auto": dense up to this basis size K, CG above
    cg_tol: float = 1e-8         # CG: stop at relative residual |r| / |b| <= cg_tol
    cg_max_iter: int = 2000      # CG: iteration cap per time

    def __post_init__(self) -> None:
        check_int(self.degree, "degree", 1)
        check_int(self.max_active, "max_active", 1)
        check_int(self.n_times, "n_times", 2)
        check_real(self.t_min, "t_min", gt=0)
        check_real(self.t_max, "t_max", gt=self.t_min)
        check_real(self.ridge, "ridge", ge=0)
        check_real(self.cond_warn, "cond_warn", gt=0, allow_inf=True)
        check_choice(self.method, "method", METHODS)
        check_choice(self.whiten, "whiten", WHITENINGS)
        check_real(self.clamp_sigmas, "clamp_sigmas", ge=0, allow_inf=True)
        if self.n_components is not None:
            check_int(self.n_components, "n_components", 1)
            if self.whiten != "pca":
                raise ValueError(f"n_components: only used with whiten='pca', got whiten="
                                 f"{self.whiten!r}")
        check_choice(self.solver, "solver", SOLVERS)
        check_int(self.dense_max, "dense_max", 1)
        check_real(self.cg_tol, "cg_tol", gt=0)
        check_int(self.cg_max_iter, "cg_max_iter", 1)

    def use_cg(self, size: int) -> bool:
        """Whether a basis of ``size`` functions is solved by CG under this config."""
        return self.solver == "cg" or (self.solver == "auto" and size > self.dense_max)


def time_grid(t_min: float, t_max: float, n: int,
              device: torch.device | str | None = None) -> Tensor:
    """``n`` log-spaced times from ``t_min`` to ``t_max`` (float64, increasing, on
    ``device``)."""
    t_min, t_max = check_time_range(t_min, t_max)
    n = check_count(n, "n", 2)
    return torch.logspace(math.log10(t_min), math.log10(t_max), n, dtype=torch.float64,
                          device=device)


@dataclass
class SpectralScoreModel:
    """Fitted coefficients ``coefs (T, K)`` on ``times (T,)``; see the module docstring.

    Its tensors live on the device of the data it was fit on; ``score`` takes points on that
    device, in any floating dtype (the result has the dtype of ``x``). ``t`` is a finite
    number > 0 (times outside the fitted grid use its end points, see :meth:`coefficients`).
    """

    basis: HermiteBasis
    affine: Affine
    times: Tensor
    coefs: Tensor
    c: Tensor
    terms: GramTerms | None
    config: SpectralConfig
    lo: Tensor | None = None
    hi: Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live (the fitted data's device)."""
        return self.coefs.device

    def solve(self, t: float) -> Tensor:
        """Exact coefficients ``a(t)`` ``(K,)`` (float64) at any ``t > 0``."""
        t = check_time(t)
        if self.terms is None:
            return torch.exp(-t * self.basis.eigenvalues.to(self.c.device)) * self.c
        a, _ = _solve_one(self.terms, rhs(self.basis.eigenvalues, self.c, t), t, self.config,
                          None, False)
        return a

    def coefficients(self, t: float) -> Tensor:
        """``a(t)`` interpolated linearly in ``log t`` on the grid (clamped): ``(K,)``."""
        t = check_time(t)
        lt = math.log(min(max(t, float(self.times[0])), float(self.times[-1])))
        logs = self.times.log()
        j = int(torch.searchsorted(logs, logs.new_tensor(lt)))
        j = min(max(j, 1), len(logs) - 1)
        w = (lt - float(logs[j - 1])) / float(logs[j] - logs[j - 1])
        return (1 - w) * self.coefs[j - 1] + w * self.coefs[j]

    def latent_score(self, y: Tensor, t: float) -> Tensor:
        """Score of the latent OU marginal ``q_t``: ``(N, k)`` -> ``(N, k)``."""
        self._check_x(y, "y", self.basis.dim)
        return self._latent_score(y, check_time(t))

    def _check_x(self, x: Tensor, name: str, dim: int) -> None:
        check_points(x, name, dim)
        if x.device != self.device:
            raise ValueError(f"{name}: is on {x.device} but the model is on {self.device}; "
                             "move the points, or fit the model on that device")

    def _latent_score(self, y: Tensor, t: float) -> Tensor:
        """:meth:`latent_score` without the argument checks (``t`` a float)."""
        yc = y
        k = self.config.clamp_sigmas
        if k > 0 and self.lo is not None:
            s = math.exp(-float(t))
            sig = math.sqrt(-math.expm1(-2 * float(t)))
            lo, hi = (s * self.lo - k * sig).to(y.dtype), (s * self.hi + k * sig).to(y.dtype)
            yc = torch.maximum(torch.minimum(y, hi), lo)
        return -y + self.basis._grad_combination(yc, self.coefficients(t))

    def score(self, x: Tensor, t: float) -> Tensor:
        """Score in data space (see :mod:`.affine`): ``(N, d)`` -> ``(N, d)``."""
        self._check_x(x, "x", self.affine.W.shape[1])
        t = check_time(t)
        return self.affine.score_to_data(self._latent_score(self.affine.encode(x), t))


def _check_data(data: Tensor) -> Tensor:
    if not isinstance(data, Tensor):
        try:
            data = torch.as_tensor(data, device="cpu")  # an array: on the CPU, like numpy
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"data: must be a tensor (or array) of shape (N, d), got "
                            f"{type(data).__name__}") from e
    if data.is_complex() or data.dtype == torch.bool:
        raise TypeError(f"data: must be real numbers, got {data.dtype}")
    if not data.is_floating_point():
        data = data.to(torch.float64)
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 1:
        raise ValueError(f"data: must have shape (N >= 2, d >= 1), got {tuple(data.shape)}")
    check_points(data, "data")
    return data


def _solve_one(terms: GramTerms, b: Tensor, t: float, cfg: SpectralConfig, x0: Tensor | None,
               check_cond: bool) -> tuple[Tensor, dict]:
    """One time of the grid by the configured solver: ``(a, info)``, ``info`` with ``cond``
    (dense) or ``iterations``/``residual`` (CG)."""
    if cfg.use_cg(terms.size):
        return solve_cg(terms, t, b, cfg.ridge, x0, cfg.cg_tol, cfg.cg_max_iter)
    a, cond = solve_system(terms.matrix(t), b, cfg.ridge, check_cond=check_cond)
    return a, {"cond": cond}


def _solve_times(terms: GramTerms, basis: HermiteBasis, c: Tensor, times: Tensor,
                 cfg: SpectralConfig) -> tuple[Tensor, dict]:
    """``a(t)`` on the grid ``(T, K)`` (CG warm-started from the previous time) and a summary:
    the worst condition number (dense) or the CG iteration counts and worst residual."""
    coefs, conds, iters, resid = [], [], [], []
    prev = None
    for i, t in enumerate(times.tolist()):
        a, inf = _solve_one(terms, rhs(basis.eigenvalues, c, t), t, cfg, prev, i == 0)
        coefs.append(a)
        prev = a
        if "cond" in inf:
            conds.append(inf["cond"])
        else:
            iters.append(inf["iterations"])
            resid.append(inf["residual"])
    worst = max((x for x in conds if not math.isnan(x)), default=math.nan)
    summary: dict = {"solver": "cg" if iters else "dense", "cond_at_t_min": worst}
    if iters:
        summary.update(cg_iterations=iters, cg_worst_residual=max(resid))
    return torch.stack(coefs), summary


def _warn_cg(summary: dict, cfg: SpectralConfig) -> None:
    if summary["solver"] == "cg" and not summary["cg_worst_residual"] <= cfg.cg_tol:
        warnings.warn(f"spectral fit: CG stopped at relative residual "
                      f"{summary['cg_worst_residual']:.3g} > cg_tol={cfg.cg_tol:g} after "
                      f"{max(summary['cg_iterations'])} iterations; raise `ridge` or "
                      "`cg_max_iter`", RuntimeWarning, stacklevel=3)


def _mean_values(basis: HermiteBasis, y: Tensor, weights: Tensor | None = None,
                 chunk: int = 1 << 24) -> Tensor:
    """``E[phi_k(y)]`` ``(K,)`` (or the ``weights``-average), in row chunks of about ``chunk``
    numbers so that ``(N, K)`` is never held at once."""
    step = max(1, chunk // max(1, basis.size))
    total = torch.zeros(basis.size, dtype=y.dtype, device=y.device)
    for s in range(0, y.shape[0], step):
        v = basis.values(y[s:s + step])
        total += v.sum(0) if weights is None else weights[s:s + step].to(v) @ v
    return total / y.shape[0] if weights is None else total


def fit(data: Tensor, basis: HermiteBasis | None = None, times: Tensor | None = None,
        config: SpectralConfig | None = None, **overrides) -> SpectralScoreModel:
    """Fit the spectral score model to samples ``data (N, d)``: one linear solve per time.

    ``basis`` defaults to ``HermiteBasis.sparse(d, config.degree, config.max_active)``,
    ``times`` to :func:`time_grid` of the config. ``overrides`` update the config fields.
    Raises ``ValueError`` on NaN/inf data, a basis of the wrong dimension, or fewer
    samples than basis functions; warns when the system is ill-conditioned.
    """
    if config is not None and not isinstance(config, SpectralConfig):
        raise TypeError(f"config: must be a SpectralConfig or None, got {type(config).__name__}")
    unknown = sorted(set(overrides) - set(SpectralConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"{unknown[0]}: not a setting of fit (SpectralConfig fields: "
                        f"{', '.join(SpectralConfig.__dataclass_fields__)})")
    cfg = SpectralConfig(**{**asdict(config or SpectralConfig()), **overrides})
    data = _check_data(data)
    if basis is not None and not isinstance(basis, HermiteBasis):
        raise TypeError(f"basis: must be a HermiteBasis or None, got {type(basis).__name__}")
    t0 = time.perf_counter()
    affine = Affine.fit(data, cfg.whiten, n_components=cfg.n_components)
    y = affine.encode(data.to(torch.float64))
    if basis is None:
        basis = HermiteBasis.sparse(y.shape[1], cfg.degree, cfg.max_active)
    if basis.dim != y.shape[1]:
        raise ValueError(f"basis: has dim {basis.dim} but data has {y.shape[1]} coordinates")
    basis = basis.to(y.device)
    if y.shape[0] <= basis.size:
        raise ValueError(f"data: has {y.shape[0]} samples but the basis has {basis.size} "
                         "functions: need more samples than basis functions (lower degree "
                         "or max_active, or add data)")
    if times is None:
        times = time_grid(cfg.t_min, cfg.t_max, cfg.n_times, device=y.device)
    else:
        if not isinstance(times, Tensor):
            times = torch.as_tensor(times, dtype=torch.float64, device=y.device)
        times = check_times_grid(times.to(device=y.device, dtype=torch.float64), "times",
                                 decreasing=False)
    c = _mean_values(basis, y)
    t1 = time.perf_counter()
    info: dict = {"basis": basis.describe(), "n_samples": int(y.shape[0])}
    if cfg.method == "perturbative":
        terms = None
        coefs = torch.exp(-times.unsqueeze(1) * basis.eigenvalues) * c
    else:
        terms = gram_terms(basis, y)
        t2 = time.perf_counter()
        coefs, summary = _solve_times(terms, basis, c, times, cfg)
        worst = summary["cond_at_t_min"]
        info.update(n_moments=terms.n_moments, n_terms=int(terms.value.numel()),
                    moments_seconds=t2 - t1, solve_seconds=time.perf_counter() - t2, **summary)
        if summary["solver"] == "dense" and not worst < cfg.cond_warn:
            warnings.warn(f"spectral fit: A(t) is ill-conditioned (condition number {worst:.3g} "
                          f"at t={float(times[0]):.3g} with ridge={cfg.ridge}); raise `ridge`, "
                          "lower `degree`/`max_active`, whiten the data or add samples",
                          RuntimeWarning, stacklevel=2)
        _warn_cg(summary, cfg)
    info["fit_seconds"] = time.perf_counter() - t0
    return SpectralScoreModel(basis, affine, times, coefs, c, terms, cfg, y.min(0).values,
                              y.max(0).values, info)
