"""Baseline: neural denoising score matching with the same OU forward process and samplers.

``eps_hat(y, t) = sigma(t) y + net(y, t)`` predicts the noise of ``y_t = e^{-t} y_0 + sigma z``
(``sigma^2 = 1 - e^{-2t}``), so the score is ``s = -eps_hat / sigma = -y - net / sigma``: the
network learns the deviation from ``N(0, I)`` as the spectral model does. Trained by Adam on
``|eps_hat - z|^2`` with ``t`` log-uniform on ``[t_min, t_max]``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from samplegrad._config import check_choice, check_int, check_real
from samplegrad._optim import check_lr
from samplegrad._progress import progress
from samplegrad.spectral._checks import check_points, check_time
from samplegrad.spectral.affine import Affine


@dataclass
class NeuralConfig:
    """Defaults for :func:`train_dsm`."""

    hidden: int = 128
    layers: int = 3
    steps: int = 3000
    batch: int = 256
    lr: float = 2e-3
    t_min: float = 1e-3
    t_max: float = 10.0
    whiten: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.hidden, "hidden", 1)
        check_int(self.layers, "layers", 1)
        check_int(self.steps, "steps", 1)
        check_int(self.batch, "batch", 1)
        check_lr(self.lr)
        check_real(self.t_min, "t_min", gt=0)
        check_real(self.t_max, "t_max", gt=self.t_min)
        check_choice(self.whiten, "whiten", ("none", "standardize", "zca", "pca"))
        check_int(self.seed, "seed")


class ScoreMLP(nn.Module):
    """MLP on ``[y, log t features]`` -> ``(N, d)``; SiLU, zero-initialized last layer."""

    def __init__(self, dim: int, hidden: int = 128, layers: int = 3, n_freq: int = 8):
        super().__init__()
        self.register_buffer("freq", torch.exp(torch.linspace(0, math.log(50.0), n_freq,
                                                                device="cpu")) / 10)
        dims = [dim + 2 * n_freq] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        last = nn.Linear(hidden, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        """``y (N, d)``, ``t (N,)`` -> ``eps_hat (N, d)``."""
        lt = t.log().unsqueeze(1) * self.freq
        sigma = (-torch.expm1(-2 * t)).sqrt().unsqueeze(1)
        return sigma * y + self.net(torch.cat([y, lt.sin(), lt.cos()], 1))


@dataclass
class NeuralScoreModel:
    """A trained :class:`ScoreMLP` behind the same interface as the spectral model."""

    net: ScoreMLP
    affine: Affine
    config: NeuralConfig
    info: dict = field(default_factory=dict)

    @torch.no_grad()
    def latent_score(self, y: Tensor, t: float) -> Tensor:
        """Score of the latent OU marginal: ``(N, k)`` -> ``(N, k)`` (dtype of ``y``)."""
        check_points(y, "y", self.affine.W.shape[0])
        t = check_time(t)
        tt = torch.full((y.shape[0],), t, dtype=torch.float32, device=y.device)
        sigma = math.sqrt(-math.expm1(-2 * t))
        return (-self.net(y.to(torch.float32), tt) / sigma).to(y.dtype)

    def score(self, x: Tensor, t: float) -> Tensor:
        """Score in data space: ``(N, d)`` -> ``(N, d)``."""
        check_points(x, "x", self.affine.W.shape[1])
        return self.affine.score_to_data(self.latent_score(self.affine.encode(x), t))


def train_dsm(data: Tensor, config: NeuralConfig | None = None, show_progress: bool = True,
              **overrides) -> NeuralScoreModel:
    """Train the baseline on ``data (N, d)``; ``info`` holds the fit time and final loss."""
    unknown = sorted(set(overrides) - set(NeuralConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"{unknown[0]}: not a setting of train_dsm (NeuralConfig fields: "
                        f"{', '.join(NeuralConfig.__dataclass_fields__)})")
    cfg = NeuralConfig(**{**(config or NeuralConfig()).__dict__, **overrides})
    check_points(data, "data", min_rows=2)
    start = time.perf_counter()
    dev = data.device
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    affine = Affine.fit(data, cfg.whiten)
    y0 = affine.encode(data.to(torch.float64)).to(torch.float32)
    net = ScoreMLP(y0.shape[1], cfg.hidden, cfg.layers).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    lo, hi = math.log(cfg.t_min), math.log(cfg.t_max)
    ema = None
    bar = progress(range(cfg.steps), desc="DSM training", disable=None if show_progress else True)
    for _ in bar:
        idx = torch.randint(0, y0.shape[0], (cfg.batch,), generator=g, device=dev)
        t = torch.exp(lo + (hi - lo) * torch.rand(cfg.batch, generator=g, device=dev))
        z = torch.randn(cfg.batch, y0.shape[1], generator=g, device=dev)
        s = torch.exp(-t).unsqueeze(1)
        yt = s * y0[idx] + (1 - s * s).sqrt() * z
        loss = (net(yt, t) - z).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
    net.eval()
    info = {"fit_seconds": time.perf_counter() - start, "final_loss_ema": ema,
            "n_params": sum(p.numel() for p in net.parameters())}
    return NeuralScoreModel(net, affine, cfg, info)
