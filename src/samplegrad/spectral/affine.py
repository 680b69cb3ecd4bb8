"""Affine maps of the data before the OU basis (data-adapted bases), PCA included.

``latent = (x - mean) @ W.T`` and ``x = latent @ W_inv.T + mean``. Diffusion runs on the
latent: the forward process in data space is ``x_t = mean + W_inv y_t`` with ``y_t`` an OU
process, and its score is ``grad_x log p_t(x) = W.T grad_y log q_t(W (x - mean))``
(:meth:`Affine.score_to_data`; needs a square invertible ``W``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from samplegrad.spectral._checks import check_count, check_nonneg, check_points


@dataclass(frozen=True)
class Affine:
    """``latent = (x - mean) @ W.T``; ``W (k, d)``, ``W_inv (d, k)``; ``k < d`` is a PCA."""

    mean: Tensor
    W: Tensor
    W_inv: Tensor

    @classmethod
    def identity(cls, dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Affine:
        dim = check_count(dim, "dim")
        eye = torch.eye(dim, dtype=dtype, device=device)
        return cls(torch.zeros(dim, dtype=dtype, device=device), eye, eye)

    @classmethod
    def fit(cls, x: Tensor, kind: str = "zca", n_components: int | None = None,
            eps: float = 1e-6) -> Affine:
        """``kind``: ``"none"``, ``"standardize"`` (per coordinate), ``"zca"`` (full whitening,
        ``W = Cov^{-1/2}``) or ``"pca"`` (top ``n_components`` principal components, whitened)."""
        check_points(x, "x", min_rows=1)
        if kind not in ("none", "standardize", "zca", "pca"):
            raise ValueError(f"kind: must be 'none', 'standardize', 'zca' or 'pca', got {kind!r}")
        eps = check_nonneg(eps, "eps")
        d = x.shape[1]
        if kind == "none":
            return cls.identity(d, x.dtype, x.device)
        x64 = x.to(torch.float64)
        mean = x64.mean(0)
        xc = x64 - mean
        if kind == "standardize":
            sd = xc.std(0).clamp_min(eps)
            W, W_inv = torch.diag(1 / sd), torch.diag(sd)
        elif kind in ("zca", "pca"):
            if kind == "pca" and n_components is not None:
                n_components = check_count(n_components, "n_components")
            cov = xc.T @ xc / max(1, x.shape[0] - 1)
            ev, V = torch.linalg.eigh(cov)
            ev, V = ev.flip(0).clamp_min(eps), V.flip(1)
            if kind == "zca":
                W = V @ torch.diag(ev.rsqrt()) @ V.T
                W_inv = V @ torch.diag(ev.sqrt()) @ V.T
            else:
                k = d if n_components is None else int(n_components)
                if not 1 <= k <= d:
                    raise ValueError(f"n_components: must be in [1, {d}], got {n_components}")
                W = torch.diag(ev[:k].rsqrt()) @ V[:, :k].T
                W_inv = V[:, :k] @ torch.diag(ev[:k].sqrt())
        dt = x.dtype
        return cls(mean.to(dt), W.to(dt), W_inv.to(dt))

    def encode(self, x: Tensor) -> Tensor:
        """``(N, d)`` -> ``(N, k)``."""
        if x.ndim != 2 or x.shape[1] != self.W.shape[1]:
            raise ValueError(f"x: must have shape (N, {self.W.shape[1]}), got {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) @ self.W.to(x.dtype).T

    def decode(self, y: Tensor) -> Tensor:
        """``(N, k)`` -> ``(N, d)``."""
        if y.ndim != 2 or y.shape[1] != self.W_inv.shape[1]:
            raise ValueError(f"y: must have shape (N, {self.W_inv.shape[1]}), got "
                             f"{tuple(y.shape)}")
        return y @ self.W_inv.to(y.dtype).T + self.mean.to(y.dtype)

    def score_to_data(self, latent_score: Tensor) -> Tensor:
        """``grad_x = W.T grad_y`` (row vectors: ``s_y @ W``): ``(N, k)`` -> ``(N, d)``."""
        if latent_score.ndim != 2 or latent_score.shape[1] != self.W.shape[0]:
            raise ValueError(f"latent_score: must have shape (N, {self.W.shape[0]}), got "
                             f"{tuple(latent_score.shape)}")
        return latent_score @ self.W.to(latent_score.dtype)
