"""Gaussian mixtures: the ground truth whose OU marginals and scores are closed-form.

Under the OU process ``x_t = e^{-t} x_0 + sqrt(1 - e^{-2t}) z`` a mixture
``sum_k w_k N(mu_k, S_k)`` becomes ``sum_k w_k N(e^{-t} mu_k, e^{-2t} S_k + (1 - e^{-2t}) I)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from samplegrad.spectral._checks import check_count, check_generator, check_nonneg, check_points


@dataclass(frozen=True)
class GaussianMixture:
    """``weights (C,)``, ``means (C, d)``, ``covs (C, d, d)`` (float64)."""

    weights: Tensor
    means: Tensor
    covs: Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, d)`` float64 samples (on the mixture's device)."""
        n = check_count(n, "n")
        check_generator(generator, self.means.device)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, 1, dtype=torch.float64, device=self.means.device,
                        generator=generator)
        return self.means[comp] + (chol[comp] @ z).squeeze(-1)

    def ou_marginal(self, t: float) -> GaussianMixture:
        """The law of ``x_t`` under OU started from this mixture (``t >= 0``)."""
        s = math.exp(-check_nonneg(t, "t"))
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.means.device)
        return GaussianMixture(self.weights, s * self.means, s * s * self.covs + (1 - s * s) * eye)

    def affine(self, mean: Tensor, W: Tensor) -> GaussianMixture:
        """The law of ``W (x - mean)``."""
        W = W.to(torch.float64)
        return GaussianMixture(self.weights, (self.means - mean.to(torch.float64)) @ W.T,
                               W @ self.covs @ W.T)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_points(x, "x", self.dim)
        prec = torch.linalg.inv(self.covs)  # (C, d, d)
        diff = x.to(torch.float64).unsqueeze(1) - self.means  # (N, C, d)
        pd = torch.einsum("cij,ncj->nci", prec, diff)
        logdet = torch.linalg.slogdet(self.covs)[1]
        logp = (self.weights.log() - 0.5 * (diff * pd).sum(-1) - 0.5 * logdet
                - 0.5 * self.dim * math.log(2 * math.pi))
        return logp, pd

    def log_prob(self, x: Tensor) -> Tensor:
        """``(N, d)`` -> ``(N,)``."""
        return torch.logsumexp(self._parts(x)[0], 1)

    def score(self, x: Tensor) -> Tensor:
        """``grad log p(x)``: ``(N, d)`` -> ``(N, d)`` float64."""
        logp, pd = self._parts(x)
        resp = torch.softmax(logp, 1)
        return -(resp.unsqueeze(-1) * pd).sum(1)

    def ou_score(self, x: Tensor, t: float) -> Tensor:
        """Exact score of the OU marginal at time ``t``."""
        return self.ou_marginal(t).score(x)

    def moments(self) -> tuple[Tensor, Tensor]:
        """Overall mean ``(d,)`` and covariance ``(d, d)``."""
        mean = (self.weights.unsqueeze(1) * self.means).sum(0)
        diff = self.means - mean
        cov = (self.weights[:, None, None] * (self.covs + diff.unsqueeze(2) * diff.unsqueeze(1)))
        return mean, cov.sum(0)

    def standardized(self) -> GaussianMixture:
        """The same mixture affinely mapped to zero mean and identity covariance (ZCA)."""
        mean, cov = self.moments()
        ev, V = torch.linalg.eigh(cov)
        return self.affine(mean, V @ torch.diag(ev.rsqrt()) @ V.T)


def random_mixture(dim: int, n_components: int = 3, separation: float = 1.5,
                   seed: int = 0, standardize: bool = True) -> GaussianMixture:
    """Random mixture: means ``~ separation * N(0, I)``-ish, random anisotropic covariances.

    ``standardize=True`` maps it to zero mean and identity covariance (the OU reference).
    """
    dim, n_components = check_count(dim, "dim"), check_count(n_components, "n_components")
    separation = check_nonneg(separation, "separation")
    seed = check_count(seed, "seed", 0)
    g = torch.Generator(device="cpu").manual_seed(seed)  # the ground truth lives on the CPU
    means = separation * torch.randn(n_components, dim, generator=g, dtype=torch.float64,
                                     device="cpu")
    q = torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64, device="cpu")
    eye = torch.eye(dim, dtype=torch.float64, device="cpu")
    covs = 0.3 * q @ q.transpose(1, 2) / dim + 0.4 * eye
    weights = torch.softmax(0.5 * torch.randn(n_components, generator=g, dtype=torch.float64,
                                               device="cpu"), 0)
    gm = GaussianMixture(weights, means, covs)
    return gm.standardized() if standardize else gm


def relative_score_error(model_score: Tensor, true_score: Tensor) -> float:
    """``sqrt(E|s_hat - s|^2 / E|s|^2)`` over the rows (relative L2 error)."""
    if model_score.shape != true_score.shape or model_score.ndim != 2:
        raise ValueError(f"model_score: must have the (N, d) shape of true_score, "
                         f"{tuple(true_score.shape)}, got {tuple(model_score.shape)}")
    num = (model_score.to(torch.float64) - true_score).pow(2).sum(1).mean()
    return float((num / true_score.pow(2).sum(1).mean()).sqrt())
