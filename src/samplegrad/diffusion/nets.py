"""A small noise-prediction network for flat 8x8 images: an MLP with a time embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from samplegrad._config import check_int


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (float or int) timesteps ``(N,) -> (N, dim)``; ``dim`` even."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class EpsMLP(nn.Module):
    """``eps_theta(x, t)``: ``x`` ``(N, dim)``, integer timesteps ``t`` ``(N,)`` -> ``(N, dim)``.

    Input projection, ``n_blocks`` residual blocks (SiLU MLP, time embedding added inside
    each block), output projection. The output layer starts at zero.
    """

    def __init__(self, dim: int = 64, hidden: int = 256, n_blocks: int = 3,
                 temb_dim: int = 64) -> None:
        super().__init__()
        check_int(dim, "dim", 1)
        check_int(hidden, "hidden", 1)
        check_int(n_blocks, "n_blocks", 0)
        if check_int(temb_dim, "temb_dim", 2) % 2:
            raise ValueError(f"temb_dim: must be even, got {temb_dim}")
        self.dim, self.temb_dim = dim, temb_dim
        self.temb = nn.Sequential(nn.Linear(temb_dim, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.t_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.temb(timestep_embedding(t, self.temb_dim).to(x.dtype))
        h = self.inp(x)
        for proj, lin in zip(self.t_proj, self.blocks):
            h = h + lin(nn.functional.silu(h + proj(emb)))
        return self.out(nn.functional.silu(h))
