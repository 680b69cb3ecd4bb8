"""Sample-quality metrics between two sample sets: energy distance, MMD, sliced Wasserstein."""

from __future__ import annotations

import torch
from torch import Tensor


def _check(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, d) and (M, d), got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    return x.to(torch.float64), y.to(torch.float64)


def _mean_dist(a: Tensor, b: Tensor, same: bool) -> Tensor:
    D = torch.cdist(a, b)
    if same:  # unbiased: drop the zero diagonal
        n = a.shape[0]
        return D.sum() / (n * (n - 1))
    return D.mean()


def energy_distance(x: Tensor, y: Tensor) -> float:
    """``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (U-statistics within each set); 0 iff same law."""
    x, y = _check(x, y)
    return float(2 * _mean_dist(x, y, False) - _mean_dist(x, x, True) - _mean_dist(y, y, True))


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel; bandwidth = median pairwise distance."""
    x, y = _check(x, y)
    if bandwidth is None:
        z = torch.cat([x[:1000], y[:1000]])
        bandwidth = float(torch.cdist(z, z).median())
    g = 1.0 / (2 * bandwidth**2)
    kxx, kyy, kxy = (torch.exp(-g * torch.cdist(a, b).pow(2)) for a, b in ((x, x), (y, y), (x, y)))
    n, m = x.shape[0], y.shape[0]
    return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean())


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance over random unit directions (quantiles matched)."""
    x, y = _check(x, y)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x @ dirs).sort(0).values, (y @ dirs).sort(0).values
    q = torch.linspace(0, 1, max(x.shape[0], y.shape[0]), dtype=torch.float64)

    def quant(p: Tensor) -> Tensor:
        pos = q * (p.shape[0] - 1)
        lo = pos.floor().long().clamp(max=p.shape[0] - 2) if p.shape[0] > 1 else pos.long()
        if p.shape[0] == 1:
            return p.expand(len(q), -1)
        w = (pos - lo).unsqueeze(1)
        return (1 - w) * p[lo] + w * p[lo + 1]

    return float((quant(px) - quant(py)).pow(2).mean().sqrt())


def sample_metrics(samples: Tensor, reference: Tensor, seed: int = 0) -> dict[str, float]:
    """Energy distance, MMD^2 and sliced W2 of ``samples`` to ``reference``."""
    return {"energy": energy_distance(samples, reference), "mmd": mmd_rbf(samples, reference),
            "sw2": sliced_wasserstein(samples, reference, seed=seed)}
