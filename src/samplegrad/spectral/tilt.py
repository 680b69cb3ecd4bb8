"""Reward tilting of a spectral score model: the KL-regularized optimum by one more solve.

``max_p E_p[R] - lam KL(p || p_0)`` is maximized by the tilted law
``p*(x) = p_0(x) exp(R(x) / lam) / Z`` (docs/methods.md#reward-tilting). A spectral model
touches its data only through averages (``c_k = E[phi_k]`` and the moments assembling
``A(t)``), so :func:`tilt` replaces every average by the self-normalized importance-weighted
one, ``w_i = exp(R(x_i) / lam) / sum_j exp(R(x_j) / lam)``: no optimizer, no sampling. The
weights' effective sample size ``ESS = 1 / sum_i w_i^2`` is reported; when it is small the
tilted averages rest on few points and :func:`tilt` warns.

The same coefficients can also be *finetuned*: :class:`SpectralEps` exposes a spectral
model as a DDPM noise model ``eps = model(y, tau)`` in its latent space, with the
coefficients ``a(t_j)`` at the sampler's timesteps as its (linear) parameters, so the
Implicit Diffusion queue of :mod:`samplegrad.implicit.finetune` trains them directly::

    sched = sampling_schedule(linear_alpha_bars(1000), n_steps=20, dtype=torch.float64)
    eps = SpectralEps(model, sched)        # trainable: eps.delta, coefficients eps.coefs
    state = finetune_init(eps, sched, FinetuneConfig(kl_weight=lam), shape=eps.dim)
    for _ in range(steps):
        state, info = finetune_step(state, eps, sched, lambda y: R(eps.decode(y)), cfg)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import Tensor, nn

from samplegrad._config import check_real
from samplegrad._validation import validation_enabled
from samplegrad.diffusion.schedules import SamplerSchedule
from samplegrad.spectral.basis import HermiteBasis
from samplegrad.spectral.model import (
    SpectralConfig,
    SpectralScoreModel,
    _check_data,
    _mean_values,
    _solve_times,
    fit,
)
from samplegrad.spectral.system import gram_terms

RewardArg = Callable[[Tensor], Tensor] | Tensor
"""``R(x (N, d)) -> (N,)`` on the data, or the rewards ``(N,)`` of the data rows."""

__all__ = ["SpectralEps", "effective_sample_size", "tilt", "tilt_weights"]


def _check_lam(lam: object) -> float:
    if isinstance(lam, Tensor) and lam.numel() == 1 and not lam.is_complex():
        lam = float(lam)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) \
            or lam <= 0:
        raise ValueError(f"lam: must be a finite number > 0 (the KL weight), got {lam!r}")
    return float(lam)


def _rewards(reward: RewardArg, data: Tensor) -> Tensor:
    """The rewards of the data rows as a float64 ``(N,)`` tensor on the data's device."""
    n = data.shape[0]
    if isinstance(reward, Tensor):
        r = reward
    elif callable(reward):
        with torch.no_grad():
            r = reward(data)
        if not isinstance(r, Tensor):
            raise TypeError(f"reward: must return a tensor of shape ({n},), got "
                            f"{type(r).__name__}")
    else:
        raise TypeError(f"reward: must be a callable R(x (N, d)) -> (N,) or a tensor of the "
                        f"data's rewards ({n},), got {type(reward).__name__}")
    if r.is_complex() or r.dtype == torch.bool:
        raise TypeError(f"reward: must give real numbers, got {r.dtype}")
    if r.shape != (n,):
        raise ValueError(f"reward: must give one value per data row, shape ({n},), got "
                         f"{tuple(r.shape)}")
    if r.device != data.device:
        raise ValueError(f"reward: its values are on {r.device} but the data is on "
                         f"{data.device}")
    r = r.detach().to(torch.float64)
    if not bool(torch.isfinite(r).all()):  # the weights need a host sync anyway
        bad = int((~torch.isfinite(r)).sum())
        raise ValueError(f"reward: gave {bad} non-finite values (NaN or inf) on the data")
    return r


def tilt_weights(rewards: Tensor, lam: float) -> Tensor:
    """Self-normalized weights ``softmax(rewards / lam)``: ``(N,)`` -> ``(N,)`` float64."""
    lam = _check_lam(lam)
    r = rewards.to(torch.float64)
    return torch.softmax((r - r.max()) / lam, 0)  # shifted: no overflow for tiny lam


def effective_sample_size(weights: Tensor) -> float:
    """``(sum w)^2 / sum w^2`` of nonnegative weights ``(N,)``: ``N`` when uniform, 1 when one
    weight carries everything."""
    w = weights.to(torch.float64)
    return float(w.sum() ** 2 / w.pow(2).sum())


def _solve_grid(basis: HermiteBasis, y: Tensor, times: Tensor, cfg: SpectralConfig,
                weights: Tensor | None) -> tuple[Tensor, Tensor, object, dict]:
    """``c``, the coefficients on ``times``, the Gram terms and the solve summary (solver,
    worst condition number or CG iterations), with weighted averages (``weights``) or plain
    means (``None``, exactly as :func:`fit`)."""
    c = _mean_values(basis, y, weights)
    if cfg.method == "perturbative":
        return c, torch.exp(-times.unsqueeze(1) * basis.eigenvalues) * c, None, {
            "solver": "none", "cond_at_t_min": math.nan}
    terms = gram_terms(basis, y, weights=weights)
    coefs, summary = _solve_times(terms, basis, c, times, cfg)
    return c, coefs, terms, summary


def tilt(source: Tensor | SpectralScoreModel, reward: RewardArg, lam: float,
         data: Tensor | None = None, *, basis: HermiteBasis | None = None,
         times: Tensor | None = None, config: SpectralConfig | None = None,
         ess_warn: float = 0.1, **overrides) -> tuple[SpectralScoreModel, dict]:
    """The spectral score model of ``p*(x) ∝ p_0(x) exp(R(x) / lam)`` from samples of ``p_0``.

    ``source``: the data ``(N, d)`` (then ``basis``, ``times``, ``config`` and ``overrides``
    are those of :func:`fit`), or a fitted :class:`SpectralScoreModel` whose basis, affine
    map, time grid and settings are reused (then ``data=`` must give the samples of ``p_0``
    it was fitted on, or other samples of it). ``reward``: a callable ``R(x) -> (N,)`` on
    the data (called without gradients) or the rewards ``(N,)`` themselves. ``lam > 0``: the
    KL weight (the temperature of the tilt).

    Every data average of the fit becomes the weighted average with
    ``w = softmax(R(x_i) / lam)``; the affine map (whitening) stays that of the untilted
    fit. When all rewards are equal the weights are uniform and the result is :func:`fit`'s
    model exactly. Returns ``(model, info)`` with ``info``: ``ess`` (``1 / sum w^2``),
    ``ess_fraction`` (``ess / N``), ``lam``, ``reward_mean`` (``E_{p_0}[R]`` on the data),
    ``tilted_reward`` (``sum_i w_i R(x_i)``, the estimate of ``E_{p*}[R]``), ``kl``
    (``sum_i w_i log(N w_i)``, the estimate of ``KL(p* || p_0)``), ``max_weight``,
    ``seconds`` and ``weights`` ``(N,)``.

    Warns (``RuntimeWarning`` naming ``lam`` and the ESS) when the weights degenerate:
    ``ess < ess_warn * N`` (default 10% of the samples; ``ess_warn=0`` turns this test off)
    or ``ess <= K`` (fewer effective samples than basis functions: the tilted system is
    estimated from too few points whatever ``ess_warn`` is). Raise ``lam`` or add data.
    """
    t0 = time.perf_counter()
    lam = _check_lam(lam)
    check_real(ess_warn, "ess_warn", ge=0, le=1)
    if isinstance(source, SpectralScoreModel):
        given = [n for n, v in (("basis", basis), ("times", times), ("config", config))
                 if v is not None] + sorted(overrides)
        if given:
            raise TypeError(f"{given[0]}: the model's own settings are reused when tilting a "
                            "SpectralScoreModel; pass the data instead to change them")
        if data is None:
            raise ValueError("data: is required when tilting a SpectralScoreModel (the "
                             "samples of p_0 it was fitted on)")
        data = _check_data(data)
        base = source
        if data.device != base.device:
            raise ValueError(f"data: is on {data.device} but the model is on {base.device}")
        if data.shape[1] != base.affine.W.shape[1]:
            raise ValueError(f"data: has {data.shape[1]} coordinates but the model was fitted "
                             f"on {base.affine.W.shape[1]}")
        affine, cfg, grid = base.affine, base.config, base.times
        y = affine.encode(data.to(torch.float64))
        basis_ = base.basis.to(y.device)
    else:
        if data is not None:
            raise TypeError("data: give the samples once, as the first argument (or pass a "
                            "fitted model first and the data as data=)")
        data = _check_data(source)
        base = fit(data, basis=basis, times=times, config=config, **overrides)
        affine, cfg, grid = base.affine, base.config, base.times
        y = affine.encode(data.to(torch.float64))
        basis_ = base.basis
    n = y.shape[0]
    if n <= basis_.size:
        raise ValueError(f"data: has {n} samples but the basis has {basis_.size} functions: "
                         "need more samples than basis functions")
    r = _rewards(reward, data)
    w = tilt_weights(r, lam)
    ess = effective_sample_size(w)
    uniform = bool((r == r[0]).all())
    c, coefs, terms, summary = _solve_grid(basis_, y, grid, cfg, None if uniform else w)
    worst = summary["cond_at_t_min"]
    if summary["solver"] == "dense" and not worst < cfg.cond_warn:
        warnings.warn(f"spectral tilt: A(t) is ill-conditioned (condition number {worst:.3g} "
                      f"at t={float(grid[0]):.3g} with ridge={cfg.ridge}); raise `ridge` or "
                      "`lam`, or lower `degree`", RuntimeWarning, stacklevel=2)
    if ess < ess_warn * n or ess <= basis_.size:
        warnings.warn(f"spectral tilt: the importance weights degenerate at lam={lam:g}: "
                      f"effective sample size {ess:.1f} of {n} samples ({100 * ess / n:.2g}%; "
                      f"warned below {100 * ess_warn:g}% or below the {basis_.size} basis "
                      "functions); the tilted fit rests on few points: raise lam or add data",
                      RuntimeWarning, stacklevel=2)
    info = {"lam": lam, "ess": ess, "ess_fraction": ess / n, "n_samples": n,
            "reward_mean": float(r.mean()), "tilted_reward": float(w @ r),
            "kl": float(torch.special.xlogy(w, n * w).sum()), "max_weight": float(w.max()),
            "uniform": uniform, "weights": w}
    model_info = {"basis": basis_.describe(), "n_samples": n, "tilt": {
        k: v for k, v in info.items() if k != "weights"}}
    if terms is not None:
        model_info.update(n_moments=terms.n_moments, **summary)
    info["seconds"] = model_info["fit_seconds"] = time.perf_counter() - t0
    model = SpectralScoreModel(basis_, affine, grid, coefs, c, terms,
                               SpectralConfig(**asdict(cfg)), y.min(0).values, y.max(0).values,
                               model_info)
    return model, info


# ---------------------------------------------------------------- finetuning the coefficients
class SpectralEps(nn.Module):
    """A spectral score model as a DDPM noise model in its latent space, for
    :mod:`samplegrad.implicit.finetune` and :mod:`samplegrad.diffusion` samplers.

    A variance-preserving DDPM with ``alpha_bar(tau)`` is the OU process at time
    ``t = -log(alpha_bar) / 2``, and ``eps(y, tau) = -sqrt(1 - alpha_bar) s(y, t)``. The
    coefficients ``a(t_j)`` at the ``T`` timesteps of ``sched`` (:attr:`coefs`, ``(T, K)``)
    start at the exact solve :meth:`SpectralScoreModel.solve`; the score is linear in them,
    ``s = -y + sum_k a_k(t) grad phi_k(y)`` (with the model's safe-extrapolation clamp).
    ``forward(y (N, k), tau (N,) long)`` accepts only the schedule's timesteps. Samples live
    in the latent space: :meth:`decode` maps them to data space.

    The trainable parameter is ``delta`` ``(T, K)`` (zero at start):
    ``coefs = a_0 + delta * scale``. With ``kl_scaled=True`` (default),
    ``scale_j = sqrt(alpha_j) sigma_j / beta_j`` makes one unit of ``delta`` cost the same
    path KL ``|sum_k delta_jk grad phi_k|^2 / 2`` at every step ``j``; on the raw
    coefficients (``kl_scaled=False``, ``scale = 1``) Adam's equal steps per coordinate move
    the steps with a small ``alpha_j`` (large ``t``) and small ``sigma_j`` by far too much KL.
    """

    def __init__(self, model: SpectralScoreModel, sched: SamplerSchedule,
                 dtype: torch.dtype = torch.float64, kl_scaled: bool = True) -> None:
        super().__init__()
        if not isinstance(model, SpectralScoreModel):
            raise TypeError(f"model: must be a SpectralScoreModel, got {type(model).__name__}")
        if not isinstance(sched, SamplerSchedule):
            raise TypeError(f"sched: must be a SamplerSchedule (see sampling_schedule), got "
                            f"{type(sched).__name__}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype: must be a floating torch.dtype, got {dtype!r}")
        if not isinstance(kl_scaled, bool):
            raise TypeError(f"kl_scaled: must be True or False, got {kl_scaled!r}")
        dev = model.device
        ab = sched.alpha_bar.to(device=dev, dtype=torch.float64)
        t = -0.5 * ab.log()
        order = torch.argsort(sched.timesteps.to(dev))
        self.basis = model.basis.to(dev)
        self.affine = model.affine
        self.clamp_sigmas = float(model.config.clamp_sigmas)
        self.register_buffer("timesteps", sched.timesteps.to(dev)[order])
        self.register_buffer("t", t[order].to(dtype))
        self.register_buffer("sigma", (1 - ab[order]).sqrt().to(dtype))
        lo = model.lo if model.lo is not None else torch.full((self.basis.dim,), -math.inf,
                                                              dtype=dtype, device=dev)
        hi = model.hi if model.hi is not None else torch.full((self.basis.dim,), math.inf,
                                                              dtype=dtype, device=dev)
        self.register_buffer("lo", lo.to(dtype))
        self.register_buffer("hi", hi.to(dtype))
        a = torch.stack([model.solve(float(tj)) for tj in t[order].tolist()])
        self.register_buffer("a0", a.to(dtype))
        if kl_scaled:
            ab_prev = sched.alpha_bar_prev.to(device=dev, dtype=torch.float64)
            alpha = ab / ab_prev
            scale = alpha.sqrt() * sched.sigma.to(device=dev, dtype=torch.float64) / (1 - alpha)
        else:
            scale = torch.ones_like(ab)
        self.register_buffer("scale", scale[order].to(dtype))
        self.delta = nn.Parameter(torch.zeros_like(self.a0))

    @property
    def coefs(self) -> Tensor:
        """``a(t_j)`` at the schedule's timesteps (increasing): ``(T, K)``."""
        return self.a0 + self.scale.unsqueeze(1) * self.delta

    @property
    def dim(self) -> int:
        """The latent dimension (the event shape is ``(dim,)``)."""
        return self.basis.dim

    def decode(self, y: Tensor) -> Tensor:
        """Latent ``(N, k)`` -> data space ``(N, d)``."""
        return self.affine.decode(y)

    def encode(self, x: Tensor) -> Tensor:
        """Data ``(N, d)`` -> latent ``(N, k)``."""
        return self.affine.encode(x)

    def _index(self, tau: Tensor) -> Tensor:
        """Row of ``coefs`` for each timestep in ``tau`` ``(N,)``."""
        tau = tau.to(self.timesteps.device).contiguous()
        return torch.searchsorted(self.timesteps, tau).clamp(max=self.timesteps.shape[0] - 1)

    def latent_score(self, y: Tensor, tau: Tensor) -> Tensor:
        """``s(y, t(tau))`` with per-row coefficients: ``(N, k)``, ``(N,)`` -> ``(N, k)``."""
        idx = self._index(tau)
        if validation_enabled() and not bool((self.timesteps[idx] == tau).all()):
            raise ValueError("tau: SpectralEps takes only the timesteps of its schedule")
        a = (self.a0[idx] + self.scale[idx].unsqueeze(1) * self.delta[idx]).to(y.dtype)
        yc = y
        if self.clamp_sigmas > 0:
            t = self.t[idx].to(y.dtype).unsqueeze(1)
            s, sig = torch.exp(-t), self.sigma[idx].to(y.dtype).unsqueeze(1)
            k = self.clamp_sigmas
            yc = torch.maximum(torch.minimum(y, s * self.hi.to(y.dtype) + k * sig),
                               s * self.lo.to(y.dtype) - k * sig)
        g = self.basis._slot_gradients(yc) * a.T.unsqueeze(0)  # (m, K, N)
        out = torch.zeros(self.basis.dim, y.shape[0], dtype=y.dtype, device=y.device)
        coords = self.basis.coords
        for r in range(self.basis.max_active):
            out = out.index_add(0, coords[:, r], g[r])
        return -y + out.T

    def forward(self, y: Tensor, tau: Tensor) -> Tensor:
        """``eps = -sqrt(1 - alpha_bar(tau)) s(y, t)``: ``(N, k)``, ``(N,)`` -> ``(N, k)``."""
        idx = self._index(tau)
        return -self.sigma[idx].to(y.dtype).unsqueeze(1) * self.latent_score(y, tau)
