"""Matrix-free solve of ``A(t) a = b(t)``: Jacobi-preconditioned conjugate gradients.

``A(t)`` is never formed: :meth:`GramTerms.matvec` applies it from the stored data-moment
terms (memory linear in the number of terms, which for a structured basis with few active
coordinates per function grows like ``K`` times the number of functions sharing a
coordinate, not like ``K^2``). The regularized system is the dense solver's,
``(A + ridge * mean(diag A) I) a = b`` (:func:`.system.solve_system`), so on a small problem
both give the same ``a`` (docs/methods.md#matrix-free-solve).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from samplegrad.spectral._checks import check_count, check_nonneg
from samplegrad.spectral.system import GramTerms


def cg(matvec: Callable[[Tensor], Tensor], b: Tensor, diag: Tensor | None = None,
       x0: Tensor | None = None, tol: float = 1e-8, max_iter: int = 1000,
       ) -> tuple[Tensor, dict]:
    """Preconditioned conjugate gradients for a symmetric positive definite operator.

    ``matvec(v (K,)) -> (K,)``, ``b (K,)``; ``diag (K,)`` (positive) is the Jacobi
    preconditioner, ``x0`` the warm start. Stops when ``|r| <= tol |b|`` or after
    ``max_iter`` iterations. Returns ``(x, info)`` with ``iterations`` and the final
    relative residual ``residual``.
    """
    tol = check_nonneg(tol, "tol")
    max_iter = check_count(max_iter, "max_iter", 0)
    if b.ndim != 1:
        raise ValueError(f"b: must be a vector (K,), got shape {tuple(b.shape)}")
    x = torch.zeros_like(b) if x0 is None else x0.to(b).clone()
    inv = None if diag is None else 1.0 / diag.to(b).clamp_min(torch.finfo(b.dtype).tiny)
    bnorm = float(b.norm())
    if bnorm == 0.0:
        return torch.zeros_like(b), {"iterations": 0, "residual": 0.0}
    r = b - matvec(x) if x0 is not None else b.clone()
    z = r if inv is None else inv * r
    p = z.clone()
    rz = float(r @ z)
    res = float(r.norm()) / bnorm
    it = 0
    while res > tol and it < max_iter:
        Ap = matvec(p)
        pAp = float(p @ Ap)
        if not pAp > 0:  # not positive definite along p (or breakdown): stop here
            break
        alpha = rz / pAp
        x.add_(p, alpha=alpha)
        r.add_(Ap, alpha=-alpha)
        res = float(r.norm()) / bnorm
        it += 1
        z = r if inv is None else inv * r
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, {"iterations": it, "residual": res}


def solve_cg(terms: GramTerms, t: float, b: Tensor, ridge: float, x0: Tensor | None = None,
             tol: float = 1e-8, max_iter: int = 1000, dtype: torch.dtype = torch.float64,
             ) -> tuple[Tensor, dict]:
    """``(A(t) + ridge * mean(diag A(t)) I) a = b`` by Jacobi-preconditioned CG, ``A`` applied
    matrix-free from ``terms``; computed in ``dtype`` (float64 default; float32 halves the
    memory traffic), returned as float64 ``(K,)`` with ``info`` (iterations, residual)."""
    ridge = check_nonneg(ridge, "ridge")
    if b.shape != (terms.size,):
        raise ValueError(f"b: must have shape ({terms.size},), got {tuple(b.shape)}")
    diag = terms.diagonal(t)
    shift = ridge * float(diag.mean().clamp_min(1e-300))
    diag = (diag + shift).to(dtype)
    A = terms.sparse(t, dtype)

    def matvec(v: Tensor) -> Tensor:
        return (A @ v.unsqueeze(1)).squeeze(1).add_(v, alpha=shift)

    a, info = cg(matvec, b.to(dtype), diag, None if x0 is None else x0.to(dtype), tol,
                 max_iter)
    if not math.isfinite(info["residual"]):
        raise FloatingPointError(f"spectral CG: non-finite residual at t={t:g}; raise ridge")
    return a.to(torch.float64), info
