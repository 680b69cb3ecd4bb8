"""Sparse tensor-Hermite bases: eigenfunctions of the OU backward Kolmogorov operator.

``phi_alpha(x) = prod_i h_{alpha_i}(x_i)`` with ``L phi_alpha = -|alpha| phi_alpha`` for
``L f = -x . grad f + Laplacian f``. A multi-index set keeps every ``alpha != 0`` of total
degree ``<= degree`` with at most ``max_active`` nonzero entries; it is stored compactly as
``coords (K, m)`` and ``degs (K, m)`` (slot ``r`` of function ``k`` is ``h_{degs[k, r]}`` of
coordinate ``coords[k, r]``; unused slots have degree 0), so evaluation costs ``O(N K m)``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from samplegrad.spectral._checks import check_count, check_points
from samplegrad.spectral.hermite import derivative_table, hermite_table


def _compositions(total_max: int, parts: int) -> list[tuple[int, ...]]:
    """Tuples of ``parts`` positive integers with sum ``<= total_max``."""
    return [c for c in itertools.product(range(1, total_max + 1), repeat=parts)
            if sum(c) <= total_max]


def basis_size(dim: int, degree: int, max_active: int) -> int:
    """``K = sum_s C(dim, s) C(degree, s)`` over ``s = 1..max_active`` (constant excluded)."""
    dim, degree = check_count(dim, "dim"), check_count(degree, "degree")
    max_active = check_count(max_active, "max_active")
    return sum(math.comb(dim, s) * math.comb(degree, s)
               for s in range(1, min(max_active, dim, degree) + 1))


@dataclass(frozen=True)
class HermiteBasis:
    """A sparse tensor-Hermite basis on ``R^dim`` (the constant function excluded).

    Build with :meth:`HermiteBasis.sparse`. ``coords``/``degs`` are ``(K, m)`` int64 (on
    the CPU, or where :meth:`to` puts them); evaluation follows the device of ``x``.
    """

    dim: int
    degree: int
    max_active: int
    coords: Tensor
    degs: Tensor

    @classmethod
    def sparse(cls, dim: int, degree: int, max_active: int = 2) -> HermiteBasis:
        """Every multi-index of total degree ``1..degree`` with ``<= max_active`` active coords."""
        dim, degree = check_count(dim, "dim"), check_count(degree, "degree")
        max_active = check_count(max_active, "max_active")
        m = min(max_active, dim, degree)
        coords, degs = [], []
        for s in range(1, m + 1):
            comps = _compositions(degree, s)
            for support in itertools.combinations(range(dim), s):
                pad = (0,) * (m - s)
                for comp in comps:
                    coords.append(support + pad)
                    degs.append(comp + pad)
        return cls(dim, degree, m, torch.tensor(coords, dtype=torch.int64, device="cpu"),
                   torch.tensor(degs, dtype=torch.int64, device="cpu"))

    @classmethod
    def structured(cls, dim: int, degree: int | Sequence[int], pairs: Tensor | Sequence | None
                   = None, pair_degree: int | None = None) -> HermiteBasis:
        """A basis for large ``dim``: every coordinate alone, plus products on chosen pairs.

        Univariate ``h_p(x_i)`` for ``1 <= p <= degree[i]`` (``degree``: one int, or one per
        coordinate), and for each pair ``(i, j)`` of ``pairs`` (``(P, 2)`` distinct
        coordinates; duplicates and order are ignored) ``h_p(x_i) h_q(x_j)`` with
        ``p, q >= 1`` and ``p + q <= pair_degree`` (default: the largest degree). ``K`` grows
        like ``dim * degree + P * pair_degree^2 / 2`` instead of ``C(dim, 2) degree^2``.
        """
        dim = check_count(dim, "dim")
        if isinstance(degree, (int, numbers.Integral)) and not isinstance(degree, bool):
            degs = [check_count(degree, "degree", 0)] * dim
        else:
            degs = [check_count(v, "degree", 0) for v in degree]
            if len(degs) != dim:
                raise ValueError(f"degree: must be an int or {dim} ints, got {len(degs)}")
        top = max(degs) if degs else 0
        pd = top if pair_degree is None else check_count(pair_degree, "pair_degree", 2)
        coords, dd = [], []
        for i, p in enumerate(degs):
            for q in range(1, p + 1):
                coords.append((i, 0))
                dd.append((q, 0))
        pr = (torch.zeros(0, 2, dtype=torch.int64, device="cpu") if pairs is None
              else torch.as_tensor(pairs, device="cpu"))
        if pr.numel() and (pr.ndim != 2 or pr.shape[1] != 2 or pr.is_floating_point()):
            raise ValueError(f"pairs: must be an integer (P, 2) array of coordinates, got "
                             f"shape {tuple(pr.shape)}")
        pr = pr.reshape(-1, 2).to(torch.int64)
        if pr.numel() and (int(pr.min()) < 0 or int(pr.max()) >= dim
                           or bool((pr[:, 0] == pr[:, 1]).any())):
            raise ValueError(f"pairs: must hold two distinct coordinates in [0, {dim}) per row")
        pr = torch.unique(pr.sort(1).values, dim=0) if pr.numel() else pr
        comps = _compositions(pd, 2)
        for i, j in pr.tolist():
            for a, b in comps:
                coords.append((i, j))
                dd.append((a, b))
        if not coords:
            raise ValueError("degree: the basis is empty (every degree is 0 and no pairs)")
        m = 2 if pr.numel() and comps else 1
        ct = torch.tensor(coords, dtype=torch.int64, device="cpu")[:, :m]
        dt = torch.tensor(dd, dtype=torch.int64, device="cpu")[:, :m]
        return cls(dim, max(top, pd if m == 2 else top), m, ct, dt)

    def to(self, device: torch.device | str) -> HermiteBasis:
        """The same basis with its index tensors on ``device``."""
        return HermiteBasis(self.dim, self.degree, self.max_active, self.coords.to(device),
                            self.degs.to(device))

    def _on(self, device: torch.device) -> HermiteBasis:
        return self if self.coords.device == device else self.to(device)

    @property
    def size(self) -> int:
        return self.coords.shape[0]

    @property
    def eigenvalues(self) -> Tensor:
        """``lambda_k = |alpha_k|`` (float64, ``(K,)``)."""
        return self.degs.sum(1).to(torch.float64)

    def dense(self) -> Tensor:
        """Multi-indices as a dense ``(K, dim)`` int64 tensor."""
        out = torch.zeros(self.size, self.dim, dtype=torch.int64, device=self.coords.device)
        return out.scatter_add_(1, self.coords, self.degs)

    def describe(self) -> dict:
        """Size and cost figures (per evaluation point) for reports."""
        K, m = self.size, self.max_active
        return {"dim": self.dim, "degree": self.degree, "max_active": m, "size": K,
                "full_total_degree_size": math.comb(self.dim + self.degree, self.degree) - 1,
                "eval_flops_per_point": K * m + self.dim * (self.degree + 1)}

    # ---- evaluation -------------------------------------------------------------------
    def _slots(self, x: Tensor, order: int) -> tuple[Tensor, ...]:
        """Slot values (and derivatives up to ``order``), each ``(m, K, N)`` (feature-first);
        ``x`` is checked by the public callers."""
        b = self._on(x.device)
        N, D1 = x.shape[0], self.degree + 1
        table = hermite_table(x.T, self.degree)  # (d, N, D+1)
        flat = (b.coords * D1 + b.degs).T.reshape(-1)  # (m K,)
        out = []
        for k in range(order + 1):
            tab = table if k == 0 else derivative_table(table, k)
            rows = tab.permute(0, 2, 1).reshape(-1, N)  # (d (D+1), N)
            out.append(rows.index_select(0, flat).view(self.max_active, self.size, N))
        return tuple(out)

    @staticmethod
    def _prod_except(vals: Tensor, r: int) -> Tensor:
        m = vals.shape[0]
        if m == 1:
            return torch.ones_like(vals[0])
        return torch.cat([vals[:r], vals[r + 1:]], 0).prod(0)

    def values(self, x: Tensor) -> Tensor:
        """``phi_k(x)``: ``(N, dim)`` -> ``(N, K)``."""
        check_points(x, "x", self.dim)
        (v,) = self._slots(x, 0)
        return v.prod(0).T

    def _slot_gradients(self, x: Tensor) -> Tensor:
        v, dv = self._slots(x, 1)
        return torch.stack([dv[r] * self._prod_except(v, r) for r in range(self.max_active)])

    def slot_gradients(self, x: Tensor) -> Tensor:
        """``d phi_k / d x_{coords[k, r]}``: ``(N, dim)`` -> ``(N, K, m)``."""
        check_points(x, "x", self.dim)
        return self._slot_gradients(x).permute(2, 1, 0)

    def gradients(self, x: Tensor) -> Tensor:
        """``grad phi_k(x)`` as a dense ``(N, K, dim)`` tensor (memory ``N K dim``)."""
        g = self.slot_gradients(x)
        out = torch.zeros(*g.shape[:2], self.dim, dtype=x.dtype, device=x.device)
        idx = self.coords.to(x.device).unsqueeze(0).expand(g.shape[0], -1, -1)
        return out.scatter_add_(2, idx, g)

    def laplacians(self, x: Tensor) -> Tensor:
        """``Laplacian phi_k(x)``: ``(N, dim)`` -> ``(N, K)``."""
        check_points(x, "x", self.dim)
        v, _, d2v = self._slots(x, 2)
        return sum(d2v[r] * self._prod_except(v, r) for r in range(self.max_active)).T

    def grad_combination(self, x: Tensor, coef: Tensor) -> Tensor:
        """``sum_k coef_k grad phi_k(x)``: ``x (N, dim)``, ``coef (K,)`` -> ``(N, dim)``.

        For ``max_active <= 2`` each ``phi_k = H_u H_v`` is a product of two 1-D table entries
        ``u = (coord, degree)``, so with ``C[u, v] = sum coef_k`` the result is
        ``sum_p h'_p(x_l) (H (C + C^T))[(l, p)]``: one ``(N, d(D+1))^2`` matmul.
        """
        check_points(x, "x", self.dim)
        if not isinstance(coef, torch.Tensor) or coef.shape != (self.size,):
            raise ValueError(f"coef: must be a tensor of shape ({self.size},), got "
                             f"{tuple(coef.shape) if isinstance(coef, torch.Tensor) else coef!r}")
        return self._grad_combination(x, coef)

    def _grad_combination(self, x: Tensor, coef: Tensor) -> Tensor:
        """:meth:`grad_combination` without the argument checks."""
        coef = coef.to(device=x.device, dtype=x.dtype)
        b = self._on(x.device)
        N, d, D1 = x.shape[0], self.dim, self.degree + 1
        if self.max_active > 2 or 8 * self.size * self.max_active < (d * D1) ** 2:
            # gathers per function: O(N K m); the pair matmul below is O(N (d (D+1))^2)
            out = torch.zeros(self.dim, N, dtype=x.dtype, device=x.device)
            step = max(1, (1 << 24) // max(1, self.size * self.max_active))
            for s in range(0, N, step):
                g = self._slot_gradients(x[s:s + step]) * coef.view(1, -1, 1)  # (m, K, n)
                for r in range(self.max_active):
                    out[:, s:s + step].index_add_(0, b.coords[:, r], g[r])
            return out.T
        u = b.coords[:, 0] * D1 + b.degs[:, 0]
        v = (b.coords[:, 1] * D1 + b.degs[:, 1]) if self.max_active == 2 else \
            torch.zeros_like(u)
        C = torch.zeros(d * D1 * d * D1, dtype=x.dtype, device=x.device).index_add_(
            0, u * d * D1 + v, coef)
        C = C.view(d * D1, d * D1)
        tab = hermite_table(x, self.degree)  # (N, d, D+1)
        y = tab.reshape(N, d * D1) @ (C + C.T)
        return (derivative_table(tab, 1) * y.view(N, d, D1)).sum(-1)
