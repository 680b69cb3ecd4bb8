"""The score model's linear system ``A(t) a = b(t)``, assembled from data averages only.

``A_jk(t) = E_{p_t}[grad phi_j . grad phi_k]`` and ``b_j(t) = lambda_j e^{-lambda_j t} c_j`` with
``c_j = E_{p_0}[phi_j]`` (docs/methods.md#linear-system). No forward-SDE sample is drawn: since
``d_i phi_alpha = sqrt(alpha_i) phi_{alpha - e_i}``, every entry of ``A`` is a sum of
``E_{p_t}[phi_u phi_v]``; the product ``phi_u phi_v`` expands exactly in tensor-Hermite
functions ``phi_gamma`` (linearization coefficients, one 1-D factor per shared coordinate)
and the expectation rule ``E_{p_t}[phi_gamma] = e^{-|gamma| t} E_{p_0}[phi_gamma]`` turns
each into a data average. So ``A(t) = sum_g e^{-g t} A_g``: the data moments are computed
once and ``A`` at any ``t`` is a cheap weighted sum (:class:`GramTerms`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from samplegrad.spectral._checks import check_nonneg, check_points
from samplegrad.spectral.basis import HermiteBasis
from samplegrad.spectral.hermite import hermite_table, linearization_table


def hermite_moments(data: Tensor, coords: Tensor, degs: Tensor, chunk: int = 4_000_000,
                    weights: Tensor | None = None) -> Tensor:
    """``E_data[prod_r h_{degs[g, r]}(x_{coords[g, r]})]``: data ``(N, d)``, ``(G, S)`` -> ``(G,)``.

    Computed in float64 by matrix products: the moments are grouped by their first ``S - 2``
    factors, and each group is one ``(n, B)^T (n, C)`` product of table columns (the last two
    factors) weighted by the group's leading factors, over row chunks of about ``chunk``
    table numbers. ``weights (N,)`` (summing to 1) replace the plain mean by the weighted
    average ``sum_i w_i (...)(x_i)`` (the reward tilt, :mod:`.tilt`).
    """
    x = data.to(torch.float64)
    N, d = x.shape
    dev = x.device
    coords, degs = coords.to(dev), degs.to(dev)
    w = None if weights is None else weights.to(device=dev, dtype=torch.float64)
    deg = int(degs.max()) if degs.numel() else 0
    flat = coords * (deg + 1) + degs  # (G, S); degree 0 is the constant 1
    G = flat.shape[0]
    if G == 0:
        return torch.zeros(0, dtype=torch.float64, device=dev)
    while flat.shape[1] < 2:
        flat = torch.cat([flat, torch.zeros_like(flat[:, :1])], 1)
    S = flat.shape[1]
    used, comp = torch.unique(flat, return_inverse=True)  # compact table columns
    if S > 2:
        _, gid = torch.unique(comp[:, :S - 2], dim=0, return_inverse=True)
    else:
        gid = torch.zeros(G, dtype=torch.int64, device=dev)
    order = torch.argsort(gid, stable=True)
    groups = []
    start = 0
    for n in torch.bincount(gid).tolist():
        idx = order[start:start + n]
        start += n
        ub, ib = torch.unique(comp[idx, S - 2], return_inverse=True)
        uc, ic = torch.unique(comp[idx, S - 1], return_inverse=True)
        groups.append((idx, comp[idx[0], :S - 2], ub, uc, ib * uc.shape[0] + ic))
    out = torch.zeros(G, dtype=torch.float64, device=dev)
    # rows per chunk: about ``chunk`` table numbers, but never under 4096 rows (the loop over
    # groups is Python: few, large products beat many small ones)
    step = max(4096, chunk // max(1, used.shape[0] + d * (deg + 1)))
    for s in range(0, N, step):
        xs = x[s:s + step]
        tab = hermite_table(xs, deg).reshape(xs.shape[0], -1).index_select(1, used)  # (n, U)
        ws = None if w is None else w[s:s + step]
        for idx, lead, ub, uc, pick in groups:
            pre = tab[:, lead].prod(1) if lead.numel() else None
            if ws is not None:
                pre = ws if pre is None else pre * ws
            left = tab[:, ub] if pre is None else tab[:, ub] * pre.unsqueeze(1)
            out.index_add_(0, idx, (left.T @ tab[:, uc]).reshape(-1)[pick])
    return out if w is not None else out / N


def ou_expectation(data: Tensor, multi_indices: Tensor, coef: Tensor, t: float) -> Tensor:
    """``E_{p_t}[sum_g coef_g phi_g]`` by the expectation rule (no forward-SDE samples).

    ``multi_indices (G, d)`` dense, ``coef (G,)``: ``sum_g coef_g e^{-|g| t} E_data[phi_g]``.
    """
    check_points(data, "data", min_rows=1)
    t = check_nonneg(t, "t")
    if multi_indices.ndim != 2 or multi_indices.shape[1] != data.shape[1]:
        raise ValueError(f"multi_indices: must have shape (G, {data.shape[1]}), got "
                         f"{tuple(multi_indices.shape)}")
    if coef.shape != multi_indices.shape[:1]:
        raise ValueError(f"coef: must have shape ({multi_indices.shape[0]},), got "
                         f"{tuple(coef.shape)}")
    mi = multi_indices.to(device=data.device, dtype=torch.int64)
    order = torch.argsort((mi > 0).to(torch.int8), dim=1, descending=True, stable=True)
    mom = hermite_moments(data, order, mi.gather(1, order))
    return (coef.to(device=data.device, dtype=torch.float64)
            * torch.exp(-t * mi.sum(1).to(torch.float64)) * mom).sum()


@dataclass(frozen=True)
class GramTerms:
    """``A(t) = M(t) + M(t)^T`` with ``M(t)[row_n, col_n] += value_n e^{-power_n t}``."""

    size: int
    rows: Tensor
    cols: Tensor
    power: Tensor
    value: Tensor
    n_moments: int

    def matrix(self, t: float) -> Tensor:
        """``A(t)`` as a dense symmetric ``(K, K)`` float64 matrix."""
        K = self.size
        t = check_nonneg(t, "t")
        w = self.value * torch.exp(-t * self.power.to(torch.float64))
        M = torch.zeros(K * K, dtype=torch.float64, device=self.value.device).index_add_(
            0, self.rows * K + self.cols, w)
        M = M.view(K, K)
        return M + M.T

    def _weights(self, t: float) -> Tensor:
        return self.value * torch.exp(-t * self.power.to(torch.float64))

    @cached_property
    def _csr_layout(self) -> tuple[Tensor, Tensor, Tensor]:
        """CSR structure of ``M + M^T`` with duplicates merged: row pointers, column indices,
        and for each term of ``cat([value, value])`` the stored entry it adds to."""
        K = self.size
        r = torch.cat([self.rows, self.cols])
        c = torch.cat([self.cols, self.rows])
        keys, inv = torch.unique(r * K + c, return_inverse=True)  # sorted by (row, col)
        crow = torch.zeros(K + 1, dtype=torch.int64, device=r.device)
        crow[1:] = torch.cumsum(torch.bincount(keys // K, minlength=K), 0)
        return crow, keys % K, inv

    def sparse(self, t: float, dtype: torch.dtype = torch.float64) -> Tensor:
        """``A(t)`` as a sparse CSR ``(K, K)`` tensor (memory ``O(nnz)``, not ``O(K^2)``)."""
        t = check_nonneg(t, "t")
        crow, col, inv = self._csr_layout
        w = self._weights(t)
        vals = torch.zeros(col.shape[0], dtype=torch.float64, device=w.device).index_add_(
            0, inv, torch.cat([w, w])).to(dtype)
        with warnings.catch_warnings():  # "sparse CSR support is in beta" and the like
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, vals, (self.size, self.size),
                                           device=w.device)

    def diagonal(self, t: float) -> Tensor:
        """``diag A(t)`` ``(K,)`` float64, without forming ``A``."""
        t = check_nonneg(t, "t")
        on = self.rows == self.cols
        return 2 * torch.zeros(self.size, dtype=torch.float64, device=self.value.device
                               ).index_add_(0, self.rows[on], self._weights(t)[on])

    def matvec(self, t: float, v: Tensor) -> Tensor:
        """``A(t) v`` for ``v (K,)`` or ``(K, B)`` without forming ``A``: two gathers and two
        scatters over the ``n_terms`` stored terms (memory ``O(n_terms)``, not ``O(K^2)``)."""
        t = check_nonneg(t, "t")
        if v.shape[0] != self.size or v.ndim not in (1, 2):
            raise ValueError(f"v: must have shape ({self.size},) or ({self.size}, B), got "
                             f"{tuple(v.shape)}")
        w = self._weights(t).to(v.dtype)
        w = w if v.ndim == 1 else w.unsqueeze(1)
        out = torch.zeros_like(v).index_add_(0, self.rows, w * v[self.cols])
        return out.index_add_(0, self.cols, w * v[self.rows])


def _derivative_entries(basis: HermiteBasis) -> tuple[Tensor, ...]:
    """One entry per (function k, active slot r): ``d_{i} phi_k = w phi_u``, u = alpha_k - e_i."""
    ks, iss, ws, ucs, uds = [], [], [], [], []
    for r in range(basis.max_active):
        k = torch.nonzero(basis.degs[:, r] > 0).squeeze(1)
        ud = basis.degs[k].clone()
        ud[:, r] -= 1
        ks.append(k)
        iss.append(basis.coords[k, r])
        ws.append(basis.degs[k, r].to(torch.float64).sqrt())
        ucs.append(basis.coords[k])
        uds.append(ud)
    return tuple(torch.cat(v) for v in (ks, iss, ws, ucs, uds))


def _pairs(iss: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unordered pairs ``e1 <= e2`` of entries on the same coordinate, with weight 1/2 on e1=e2."""
    firsts, seconds = [], []
    order = torch.argsort(iss, stable=True)
    counts = torch.bincount(iss)
    start = 0
    for n in counts.tolist():
        if n:
            grp = order[start:start + n]
            tri = torch.triu_indices(n, n, device=iss.device)
            firsts.append(grp[tri[0]])
            seconds.append(grp[tri[1]])
        start += n
    e1, e2 = torch.cat(firsts), torch.cat(seconds)
    half = torch.where(e1 == e2, 0.5, 1.0).to(torch.float64)
    return e1, e2, half


def _expand_branches(mn: Tensor) -> tuple[Tensor, Tensor]:
    """For rows with per-slot maxima ``mn (P, m)``: all ``r`` with ``0 <= r <= mn`` slotwise.

    Returns ``src (P',)`` (row of each expansion) and ``rr (P', m)``.
    """
    P, m = mn.shape
    dev = mn.device
    src = torch.arange(P, device=dev)
    rr = torch.zeros(P, 0, dtype=torch.int64, device=dev)
    for r in range(m):
        counts = mn[src, r] + 1
        new_src = torch.repeat_interleave(torch.arange(src.shape[0], device=dev), counts)
        starts = torch.cumsum(counts, 0) - counts
        branch = torch.arange(new_src.shape[0], device=dev) - starts[new_src]
        rr = torch.cat([rr[new_src], branch.unsqueeze(1)], 1)
        src = src[new_src]
    return src, rr


def gram_terms(basis: HermiteBasis, data: Tensor, chunk: int = 2_000_000,
               weights: Tensor | None = None) -> GramTerms:
    """Expand ``A(t)`` for ``basis`` into data moments (see module docstring). Data ``(N, d)``;
    everything is computed on the data's device. ``weights (N,)`` (summing to 1): weighted
    data averages instead of plain means (:func:`samplegrad.spectral.tilt`)."""
    if not isinstance(basis, HermiteBasis):
        raise TypeError(f"basis: must be a HermiteBasis, got {type(basis).__name__}")
    check_points(data, "data", basis.dim, min_rows=1)
    basis = basis.to(data.device)
    K, d, m = basis.size, basis.dim, basis.max_active
    ks, iss, ws, ucs, uds = _derivative_entries(basis)
    e1, e2, half = _pairs(iss)
    cu, du, cv, dv = ucs[e1], uds[e1], ucs[e2], uds[e2]
    weight = ws[e1] * ws[e2] * half
    # matched degree of v on each of u's slots (0 where the coordinate is not shared)
    match = (cu.unsqueeze(2) == cv.unsqueeze(1)) & (du.unsqueeze(2) > 0) & (dv.unsqueeze(1) > 0)
    dvm = (match * dv.unsqueeze(1)).sum(-1)
    src, rr = _expand_branches(torch.minimum(du, dvm))
    # gamma in compact form: u's slots absorb the shared coordinates of v
    a, b, r2 = du[src], dvm[src], rr
    L = linearization_table(basis.degree).to(data.device)
    coef = L[a, b, a + b - 2 * r2].prod(-1)
    g_deg = torch.cat([a + b - 2 * r2, dv[src] * (~match.any(1))[src]], 1)  # (P', 2m)
    g_crd = torch.cat([cu[src], cv[src]], 1)
    base = 2 * basis.degree
    code = torch.where(g_deg > 0, g_crd * base + g_deg, 0)
    S = min(2 * m - 1, d)
    code = code.sort(1, descending=True).values[:, :S]
    radix = (d * base + 1) ** torch.arange(S, dtype=torch.int64, device=data.device)
    ukeys, inv = torch.unique((code * radix).sum(1), return_inverse=True)
    ucode = (ukeys.unsqueeze(1) // radix) % (d * base + 1)  # (G, S)
    ucrd, udeg = torch.where(ucode > 0, (ucode - 1) // base, 0), torch.where(
        ucode > 0, (ucode - 1) % base + 1, 0)
    mom = hermite_moments(data, ucrd, udeg, chunk=chunk, weights=weights)
    power = g_deg.sum(1)
    value = weight[src] * coef * mom[inv]
    rows, cols = ks[e1][src], ks[e2][src]
    key = (rows * K + cols) * (2 * basis.degree + 1) + power
    ukey, kinv = torch.unique(key, return_inverse=True)
    val = torch.zeros(ukey.shape[0], dtype=torch.float64, device=data.device).index_add_(
        0, kinv, value)
    pw = ukey % (2 * basis.degree + 1)
    rc = ukey // (2 * basis.degree + 1)
    return GramTerms(K, rc // K, rc % K, pw, val, int(ukeys.shape[0]))


def rhs(eigenvalues: Tensor, c: Tensor, t: float) -> Tensor:
    """``b_j(t) = lambda_j e^{-lambda_j t} c_j`` (float64)."""
    t = check_nonneg(t, "t")
    if c.shape != eigenvalues.shape:
        raise ValueError(f"c: must have the shape of eigenvalues, {tuple(eigenvalues.shape)}, "
                         f"got {tuple(c.shape)}")
    lam = eigenvalues.to(torch.float64)
    return lam * torch.exp(-t * lam) * c.to(device=lam.device, dtype=torch.float64)


def solve_system(A: Tensor, b: Tensor, ridge: float, check_cond: bool = False,
                 ) -> tuple[Tensor, float]:
    """Solve ``(A + ridge * mean(diag A) I) a = b`` in float64 by Cholesky.

    Returns ``(a, cond)``: ``cond`` is the regularized matrix's condition number when
    ``check_cond`` (an eigendecomposition) or when Cholesky fails (then a least-squares
    solve is used and ``cond`` is ``inf`` for an indefinite matrix), else ``nan``.
    """
    ridge = check_nonneg(ridge, "ridge")
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A: must be a square matrix, got shape {tuple(A.shape)}")
    if b.shape != A.shape[:1]:
        raise ValueError(f"b: must have shape ({A.shape[0]},), got {tuple(b.shape)}")
    A = A.to(torch.float64)
    K = A.shape[0]
    Ar = A + (ridge * A.diagonal().mean().clamp_min(1e-300)) * torch.eye(K, dtype=A.dtype,
                                                                        device=A.device)
    cond = math.nan
    if check_cond:
        ev = torch.linalg.eigvalsh(Ar)
        cond = float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf
    L, info = torch.linalg.cholesky_ex(Ar)
    if int(info) == 0:
        return torch.cholesky_solve(b.to(A).unsqueeze(1), L).squeeze(1), cond
    ev = torch.linalg.eigvalsh(Ar)
    cond = float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf
    return torch.linalg.lstsq(Ar, b.to(A).unsqueeze(1)).solution.squeeze(1), cond
