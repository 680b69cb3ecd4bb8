"""Sample-quality metrics between two sample sets: energy distance, MMD, sliced Wasserstein."""

from __future__ import annotations

import torch
from torch import Tensor

from samplegrad.spectral._checks import check_count, check_points, check_time


def _check(x: Tensor, y: Tensor, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    """Two finite sample sets of the same width with ``>= min_rows`` rows each (the
    U-statistics drop the diagonal, so they need two), as float64."""
    check_points(x, "x", min_rows=min_rows)
    check_points(y, "y", x.shape[1], min_rows=min_rows)
    if y.device != x.device:
        raise ValueError(f"y: is on {y.device} but x is on {x.device}")
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
    if bandwidth is not None:
        bandwidth = check_time(bandwidth, "bandwidth")
    if bandwidth is None:
        z = torch.cat([x[:1000], y[:1000]])
        bandwidth = float(torch.cdist(z, z).median())
    g = 1.0 / (2 * bandwidth**2)
    kxx, kyy, kxy = (torch.exp(-g * torch.cdist(a, b).pow(2)) for a, b in ((x, x), (y, y), (x, y)))
    n, m = x.shape[0], y.shape[0]
    return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean())


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance over random unit directions (quantiles matched)."""
    x, y = _check(x, y, min_rows=1)
    n_projections = check_count(n_projections, "n_projections")
    seed = check_count(seed, "seed", 0)
    g = torch.Generator(device=x.device).manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64,
                       device=x.device)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x @ dirs).sort(0).values, (y @ dirs).sort(0).values
    q = torch.linspace(0, 1, max(x.shape[0], y.shape[0]), dtype=torch.float64, device=x.device)

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
