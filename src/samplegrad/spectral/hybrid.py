"""Hybrid score model: the spectral solve as the base, a small network for the residual.

``s(y, t) = s_spec(y, t) - r(y, t) / sigma(t)`` in the spectral model's latent space, with
``r`` a :class:`~samplegrad.spectral.neural_baseline.ScoreMLP`-style network whose last layer
starts at zero (so training starts at the spectral model) and is trained by denoising score
matching on ``|eps_hat - z|^2`` with ``eps_hat = -sigma s = -sigma s_spec + r``
(docs/methods.md#hybrid-residual). The network only learns what the polynomial span misses,
so it needs far fewer steps than a network learning the whole score.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from samplegrad.spectral._checks import check_points, check_time
from samplegrad.spectral.affine import Affine
from samplegrad.spectral.model import SpectralScoreModel
from samplegrad.spectral.neural_baseline import NeuralConfig, ScoreMLP

__all__ = ["HybridScoreModel", "train_residual"]


class _Residual(ScoreMLP):
    """:class:`ScoreMLP` without the ``sigma y`` skip: the residual ``r(y, t) (N, d)``."""

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        lt = t.log().unsqueeze(1) * self.freq
        return self.net(torch.cat([y, lt.sin(), lt.cos()], 1))


def base_score(model: SpectralScoreModel, y: Tensor, t: Tensor) -> Tensor:
    """The spectral latent score with one time per row: ``y (N, k)``, ``t (N,)`` -> ``(N, k)``.

    Same as ``model.latent_score(y[i:i+1], t[i])`` row by row (coefficients interpolated in
    ``log t`` on the fit grid, the clamp box of ``clamp_sigmas``), in one batched pass.
    """
    check_points(y, "y", model.basis.dim)
    if t.shape != y.shape[:1]:
        raise ValueError(f"t: must have shape ({y.shape[0]},), got {tuple(t.shape)}")
    logs = model.times.log()
    lt = t.to(torch.float64).log().clamp(float(logs[0]), float(logs[-1]))
    j = torch.searchsorted(logs, lt).clamp(1, len(logs) - 1)
    w = ((lt - logs[j - 1]) / (logs[j] - logs[j - 1])).unsqueeze(1)
    a = ((1 - w) * model.coefs[j - 1] + w * model.coefs[j]).to(y.dtype)  # (N, K)
    yc = y
    k = model.config.clamp_sigmas
    if k > 0 and model.lo is not None:
        tt = t.to(y.dtype).unsqueeze(1)
        s, sig = torch.exp(-tt), (-torch.expm1(-2 * tt)).sqrt()
        yc = torch.maximum(torch.minimum(y, s * model.hi.to(y.dtype) + k * sig),
                           s * model.lo.to(y.dtype) - k * sig)
    b = model.basis._on(y.device)
    g = b._slot_gradients(yc)  # (m, K, N)
    out = torch.zeros(b.dim, y.shape[0], dtype=y.dtype, device=y.device)
    for r in range(b.max_active):
        out.index_add_(0, b.coords[:, r], g[r] * a.T)
    return -y + out.T


@dataclass
class HybridScoreModel:
    """A spectral base plus a trained residual network (same interface as the others)."""

    base: SpectralScoreModel
    net: ScoreMLP
    config: NeuralConfig
    info: dict = field(default_factory=dict)

    @property
    def affine(self) -> Affine:
        return self.base.affine

    @torch.no_grad()
    def latent_score(self, y: Tensor, t: float) -> Tensor:
        """Score of the latent OU marginal: ``(N, k)`` -> ``(N, k)`` (dtype of ``y``)."""
        check_points(y, "y", self.base.basis.dim)
        t = check_time(t)
        tt = torch.full((y.shape[0],), t, dtype=torch.float32, device=y.device)
        sigma = math.sqrt(-math.expm1(-2 * t))
        res = self.net(y.to(torch.float32), tt).to(y.dtype)
        return self.base._latent_score(y, t) - res / sigma

    def score(self, x: Tensor, t: float) -> Tensor:
        """Score in data space: ``(N, d)`` -> ``(N, d)``."""
        check_points(x, "x", self.affine.W.shape[1])
        return self.affine.score_to_data(self.latent_score(self.affine.encode(x), t))


def train_residual(base: SpectralScoreModel, data: Tensor, config: NeuralConfig | None = None,
                   show_progress: bool = True, **overrides) -> HybridScoreModel:
    """Train the residual network of a :class:`HybridScoreModel` on ``data (N, d)`` (the data
    ``base`` was fitted on) by DSM for ``config.steps`` Adam steps (``whiten`` is ignored: the
    network works in ``base``'s latent space). ``info["fit_seconds"]`` is the residual
    training time plus ``base.info["fit_seconds"]``."""
    from samplegrad._progress import progress

    if not isinstance(base, SpectralScoreModel):
        raise TypeError(f"base: must be a SpectralScoreModel, got {type(base).__name__}")
    unknown = sorted(set(overrides) - set(NeuralConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"{unknown[0]}: not a setting of train_residual (NeuralConfig fields: "
                        f"{', '.join(NeuralConfig.__dataclass_fields__)})")
    cfg = NeuralConfig(**{**asdict(config or NeuralConfig()), **overrides})
    check_points(data, "data", base.affine.W.shape[1], min_rows=2)
    start = time.perf_counter()
    dev = data.device
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    y0 = base.affine.encode(data.to(torch.float64)).to(torch.float32)
    net = _Residual(y0.shape[1], cfg.hidden, cfg.layers).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    lo, hi = math.log(cfg.t_min), math.log(cfg.t_max)
    ema = None
    for _ in progress(range(cfg.steps), desc="residual DSM",
                      disable=None if show_progress else True):
        idx = torch.randint(0, y0.shape[0], (cfg.batch,), generator=g, device=dev)
        t = torch.exp(lo + (hi - lo) * torch.rand(cfg.batch, generator=g, device=dev))
        z = torch.randn(cfg.batch, y0.shape[1], generator=g, device=dev)
        s = torch.exp(-t).unsqueeze(1)
        sig = (1 - s * s).sqrt()
        yt = s * y0[idx] + sig * z
        with torch.no_grad():
            eps_base = -sig * base_score(base, yt, t)
        loss = (eps_base + net(yt, t) - z).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
    net.eval()
    secs = time.perf_counter() - start
    info = {"residual_seconds": secs, "base_seconds": base.info.get("fit_seconds", 0.0),
            "fit_seconds": secs + base.info.get("fit_seconds", 0.0), "final_loss_ema": ema,
            "n_params": sum(p.numel() for p in net.parameters())}
    return HybridScoreModel(base, net, cfg, info)
