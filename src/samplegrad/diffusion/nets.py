"""Small noise-prediction networks: an MLP for flat vectors (8x8 digits) and a conv U-Net
for images (28x28 Fashion-MNIST)."""

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


def _groups(channels: int, groups: int) -> int:
    """The largest divisor of ``channels`` that is <= ``groups`` (GroupNorm needs one)."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added between, 1x1 skip if needed."""

    def __init__(self, c_in: int, c_out: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out, groups), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class EpsUNet(nn.Module):
    """A small convolutional U-Net noise model for images: ``eps_theta(x, t)``, ``x``
    ``(N, channels, H, W)``, integer timesteps ``t`` ``(N,)`` -> ``(N, channels, H, W)``.

    One residual block per resolution on the way down and one on the way up (with the skip
    connection concatenated), one in the middle; a strided convolution halves the resolution
    between levels and nearest upsampling + a convolution doubles it. ``mults`` gives each
    level's width as a multiple of ``base``; ``H`` and ``W`` must be divisible by
    ``2 ** (len(mults) - 1)`` (28x28 with the default two halvings: 28 -> 14 -> 7). The time
    embedding (sinusoidal, then a SiLU MLP) is added inside every block; GroupNorm only (no
    batch statistics, so a sample's output never depends on the rest of the batch). The
    output convolution starts at zero. Runs on the device and in the dtype of its weights::

        net = EpsUNet(channels=1, base=16)
        eps = net(torch.randn(4, 1, 28, 28), torch.full((4,), 10))  # (4, 1, 28, 28)
    """

    def __init__(self, channels: int = 1, base: int = 16, mults: tuple[int, ...] = (1, 2, 2),
                 temb_dim: int = 64, groups: int = 8) -> None:
        super().__init__()
        check_int(channels, "channels", 1)
        check_int(base, "base", 1)
        check_int(groups, "groups", 1)
        if check_int(temb_dim, "temb_dim", 2) % 2:
            raise ValueError(f"temb_dim: must be even, got {temb_dim}")
        if not isinstance(mults, (tuple, list)) or not mults or not all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mults):
            raise ValueError(f"mults: must be a non-empty tuple of ints >= 1, got {mults!r}")
        self.channels, self.temb_dim, self.mults = channels, temb_dim, tuple(mults)
        emb = 4 * base
        widths = [base * m for m in mults]
        self.temb = nn.Sequential(nn.Linear(temb_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        c = base
        for i, w in enumerate(widths):
            self.down.append(_ResBlock(c, w, emb, groups))
            c = w
            if i < len(widths) - 1:
                self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = _ResBlock(c, c, emb, groups)
        self.up = nn.ModuleList()
        self.unpool = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(_ResBlock(c + w, w, emb, groups))
            c = w
            if i > 0:
                self.unpool.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(c, groups), c)
        self.out = nn.Conv2d(c, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x: must be images shaped (N, {self.channels}, H, W), got "
                             f"{tuple(x.shape)}")
        f = 2 ** (len(self.mults) - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x: height and width must be divisible by {f} (the U-Net halves "
                             f"them {len(self.mults) - 1} times), got {tuple(x.shape[2:])}")
        emb = self.temb(timestep_embedding(t, self.temb_dim).to(x.dtype))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.unpool):
                h = self.unpool[i](nn.functional.interpolate(h, scale_factor=2.0,
                                                             mode="nearest"))
        return self.out(nn.functional.silu(self.out_norm(h)))
