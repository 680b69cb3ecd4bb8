"""Boltzmann targets ``p ∝ exp(-U)`` for the spectral benchmark, and a MALA sampler.

* :class:`Phi4Lattice` — a Ginzburg-Landau / lattice phi^4 field on an ``L x L`` periodic
  grid (``d = L^2``),
  ``U = sum_x [J/2 sum_mu (phi_{x+mu} - phi_x)^2 + m2/2 phi_x^2 + g/4 phi_x^4]``.
  Reference samples come from MALA chains (:func:`reference_samples`, cached in the user
  cache's ``mala/``).
* :class:`PerturbedGaussian` — ``U = |x|^2/2 + delta sum_i x_i^4/4``: a product law, so it is
  sampled exactly (rejection from ``N(0, 1)`` per coordinate) and the OU score of every
  ``p_t`` is computed by 1-D quadrature (:meth:`PerturbedGaussian.ou_score`).

MALA is an ``init``/``step`` pair over an explicit :class:`MALAState`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from samplegrad.checkpoint import load_cache, save_checkpoint
from samplegrad_bench import paths
from samplegrad_bench._common import progress


@dataclass(frozen=True)
class Phi4Lattice:
    """Lattice phi^4 on ``side x side`` periodic sites (``d = side**2``)."""

    side: int = 4
    J: float = 0.5
    m2: float = -0.5
    g: float = 1.0

    @property
    def dim(self) -> int:
        return self.side * self.side

    def energy(self, x: Tensor) -> Tensor:
        """``U(x)``: ``(N, d)`` -> ``(N,)``."""
        f = x.view(-1, self.side, self.side)
        grad2 = (f.roll(1, 1) - f).pow(2) + (f.roll(1, 2) - f).pow(2)
        site = 0.5 * self.J * grad2 + 0.5 * self.m2 * f.pow(2) + 0.25 * self.g * f.pow(4)
        return site.flatten(1).sum(1)

    def grad_energy(self, x: Tensor) -> Tensor:
        """``grad U(x)``: ``(N, d)`` -> ``(N, d)``."""
        f = x.view(-1, self.side, self.side)
        lap = f.roll(1, 1) + f.roll(-1, 1) + f.roll(1, 2) + f.roll(-1, 2) - 4 * f
        return (-self.J * lap + self.m2 * f + self.g * f.pow(3)).flatten(1)


@dataclass(frozen=True)
class PerturbedGaussian:
    """``p ∝ exp(-|x|^2/2 - delta sum_i x_i^4 / 4)`` on ``R^dim``."""

    dim: int = 16
    delta: float = 0.5

    def energy(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).sum(1) + 0.25 * self.delta * x.pow(4).sum(1)

    def grad_energy(self, x: Tensor) -> Tensor:
        return x + self.delta * x.pow(3)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples ``(n, dim)`` (float64) by per-coordinate rejection from N(0, 1)."""
        out = torch.empty(0, dtype=torch.float64)
        need = n * self.dim
        while out.numel() < need:
            z = torch.randn(2 * (need - out.numel()) + 64, dtype=torch.float64, generator=generator)
            u = torch.rand(z.shape, dtype=torch.float64, generator=generator)
            out = torch.cat([out, z[u < torch.exp(-0.25 * self.delta * z.pow(4))]])
        return out[:need].view(n, self.dim)

    def ou_score(self, x: Tensor, t: float, half_width: float = 8.0, n_grid: int = 4001) -> Tensor:
        """Exact (quadrature) score of the OU marginal ``p_t`` at ``x (N, d)`` -> ``(N, d)``.

        ``p_t`` is a product of 1-D laws ``int p_0(u) N(y; e^{-t} u, 1 - e^{-2t}) du``,
        integrated on a uniform grid of ``n_grid`` points over ``[-half_width, half_width]``.
        """
        s = math.exp(-t)
        var = -math.expm1(-2 * t)
        u = torch.linspace(-half_width, half_width, n_grid, dtype=torch.float64)
        logp0 = -0.5 * u.pow(2) - 0.25 * self.delta * u.pow(4)
        y = x.to(torch.float64).reshape(-1, 1)
        out = torch.empty(y.shape[0], dtype=torch.float64)
        for i in range(0, y.shape[0], 4096):
            r = y[i:i + 4096] - s * u  # (B, G)
            logw = logp0 - 0.5 * r.pow(2) / var
            w = torch.softmax(logw, 1)
            out[i:i + 4096] = -(w * r).sum(1) / var
        return out.view_as(x)


@dataclass(frozen=True)
class MALAState:
    """Positions ``x (C, d)``, energies, gradients, step size and acceptance counts."""

    x: Tensor
    energy: Tensor
    grad: Tensor
    step_size: float
    accepted: int = 0
    proposed: int = 0


def mala_init(target, x: Tensor, step_size: float) -> MALAState:
    """Start chains at ``x (C, d)``; ``target`` has ``energy`` and ``grad_energy``."""
    return MALAState(x, target.energy(x), target.grad_energy(x), step_size)


def mala_step(target, state: MALAState, generator: torch.Generator | None = None) -> MALAState:
    """One Metropolis-adjusted Langevin step ``x' = x - h grad U + sqrt(2h) z`` for all chains."""
    h = state.step_size
    x, g = state.x, state.grad
    prop = x - h * g + math.sqrt(2 * h) * torch.randn(x.shape, dtype=x.dtype, generator=generator)
    e_p, g_p = target.energy(prop), target.grad_energy(prop)
    log_q_fwd = -(prop - x + h * g).pow(2).sum(1) / (4 * h)
    log_q_bwd = -(x - prop + h * g_p).pow(2).sum(1) / (4 * h)
    log_a = state.energy - e_p + log_q_bwd - log_q_fwd
    acc = torch.rand(log_a.shape, dtype=x.dtype, generator=generator).log() < log_a
    m = acc.unsqueeze(1)
    return MALAState(torch.where(m, prop, x), torch.where(acc, e_p, state.energy),
                     torch.where(m, g_p, g), h, state.accepted + int(acc.sum()),
                     state.proposed + acc.numel())


def run_mala(target, n: int, n_chains: int = 500, n_burn: int = 2000, thin: int = 20,
             step_size: float = 0.1, seed: int = 0, show_progress: bool = True,
             ) -> tuple[Tensor, float]:
    """``n`` samples from ``n_chains`` parallel MALA chains (float64) and the acceptance rate.

    The step size adapts during burn-in toward an acceptance rate of 0.57, then is frozen.
    """
    g = torch.Generator().manual_seed(seed)
    state = mala_init(target, torch.randn(n_chains, target.dim, dtype=torch.float64,
                                          generator=g), step_size)
    for i in progress(range(n_burn), desc="MALA burn-in", disable=None if show_progress else True):
        new = mala_step(target, state, g)
        if i % 50 == 49:
            rate = (new.accepted) / max(1, new.proposed)
            h = new.step_size * math.exp(rate - 0.57)
            new = replace(new, step_size=h, accepted=0, proposed=0)
        state = new
    state = replace(state, accepted=0, proposed=0)
    out = []
    n_rounds = math.ceil(n / n_chains)
    for _ in progress(range(n_rounds * thin), desc="MALA", disable=None if show_progress else True):
        state = mala_step(target, state, g)
        if state.proposed // n_chains % thin == 0:
            out.append(state.x)
    samples = torch.cat(out)[:n]
    return samples, state.accepted / max(1, state.proposed)


def reference_samples(target, n: int, seed: int = 0, cache_dir: str | Path | None = None,
                      show_progress: bool = True, **mala_kw) -> Tensor:
    """MALA reference samples ``(n, d)``, cached in ``cache_dir`` (default: the user cache's
    ``mala/``, see :func:`samplegrad_bench.paths.cache_dir`), keyed by target and settings."""
    key = hashlib.sha1(repr((target, n, seed, sorted(mala_kw.items()))).encode()).hexdigest()[:16]
    folder = paths.cache_dir("mala") if cache_dir is None else Path(cache_dir)
    path = folder / f"mala_{type(target).__name__}_{key}.pt"
    cached = load_cache(path, check=lambda d: d["samples"])
    if cached is not None:  # missing or damaged (warned): sampled again
        return cached["samples"]
    samples, rate = run_mala(target, n, seed=seed, show_progress=show_progress, **mala_kw)
    save_checkpoint(path, {"samples": samples, "acceptance": rate, "target": repr(target)})
    return samples
