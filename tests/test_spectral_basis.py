"""Hermite basis: orthonormality (Gauss-Hermite quadrature), eigenfunctions of L, derivatives."""

import itertools
import math

import numpy as np
import pytest
import torch

from samplegrad.spectral.basis import HermiteBasis, basis_size
from samplegrad.spectral.hermite import hermite_table, linearization_table


def _gauss(n):
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(z), torch.tensor(w / w.sum())


def test_hermite_orthonormal_by_quadrature():
    z, w = _gauss(40)  # exact for polynomials of degree <= 79
    H = hermite_table(z, 30)  # (Q, 31)
    gram = H.T @ (w.unsqueeze(1) * H)
    assert torch.allclose(gram, torch.eye(31, dtype=torch.float64), atol=1e-9)


def test_hermite_matches_numpy_and_is_stable_at_high_degree():
    x = torch.linspace(-4, 4, 17, dtype=torch.float64)
    H = hermite_table(x, 12)
    for n in range(13):
        ref = np.polynomial.hermite_e.hermeval(x.numpy(), [0] * n + [1]) / math.sqrt(
            math.factorial(n))
        assert np.allclose(H[:, n].numpy(), ref, rtol=1e-10, atol=1e-10)
    big = hermite_table(torch.tensor([10.0, -30.0], dtype=torch.float64), 200)
    assert torch.isfinite(big).all()  # no factorial overflow


def test_tensor_basis_orthonormal_2d():
    z, w = _gauss(12)
    Z = torch.tensor(list(itertools.product(z.tolist(), repeat=2)), dtype=torch.float64)
    W = torch.tensor([a * b for a, b in itertools.product(w.tolist(), repeat=2)],
                     dtype=torch.float64)
    B = HermiteBasis.sparse(2, 5, 2)
    V = B.values(Z)
    gram = V.T @ (W.unsqueeze(1) * V)
    assert torch.allclose(gram, torch.eye(B.size, dtype=torch.float64), atol=1e-10)
    # orthogonal to the constant: zero mean under N(0, I)
    assert torch.allclose(W @ V, torch.zeros(B.size, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("dim,degree,m", [(1, 6, 1), (3, 4, 2), (4, 4, 3), (5, 3, 1)])
def test_sparse_sizes(dim, degree, m):
    B = HermiteBasis.sparse(dim, degree, m)
    assert B.size == basis_size(dim, degree, m)
    dense = B.dense()
    assert (dense.sum(1) <= degree).all() and ((dense > 0).sum(1) <= m).all()
    assert len({tuple(r) for r in dense.tolist()}) == B.size  # no duplicates
    if m >= min(dim, degree):  # no sparsity: every multi-index of degree 1..D
        assert B.size == math.comb(dim + degree, degree) - 1


def test_eigenfunctions_of_backward_kolmogorov_operator():
    """-x . grad phi + Laplacian phi = -|alpha| phi, derivatives checked against autograd."""
    B = HermiteBasis.sparse(3, 4, 2)
    x = torch.randn(7, 3, dtype=torch.float64)
    grads, laps = B.gradients(x), B.laplacians(x)
    Lphi = -(x.unsqueeze(1) * grads).sum(-1) + laps
    assert torch.allclose(Lphi, -B.eigenvalues * B.values(x), atol=1e-10)
    xg = x.clone().requires_grad_(True)
    for k in [0, 5, B.size - 1]:
        (g,) = torch.autograd.grad(B.values(xg)[:, k].sum(), xg, create_graph=True)
        lap = sum(torch.autograd.grad(g[:, i].sum(), xg, retain_graph=True)[0][:, i]
                  for i in range(3))
        assert torch.allclose(g, grads[:, k], atol=1e-10)
        assert torch.allclose(lap, laps[:, k], atol=1e-9)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_grad_combination_matches_dense_gradients(m):
    B = HermiteBasis.sparse(4, 3, m)
    x = torch.randn(20, 4, dtype=torch.float64)
    a = torch.randn(B.size, dtype=torch.float64)
    ref = torch.einsum("nkd,k->nd", B.gradients(x), a)
    assert torch.allclose(B.grad_combination(x, a), ref, atol=1e-10)


def test_linearization_table_by_quadrature():
    z, w = _gauss(20)
    H = hermite_table(z, 12)
    L = linearization_table(6)
    for a, b in [(0, 3), (2, 2), (3, 5), (6, 6)]:
        proj = (w * H[:, a] * H[:, b]) @ H  # <h_a h_b, h_c>
        assert torch.allclose(proj[:13], L[a, b], atol=1e-9)


def test_bad_basis_arguments():
    with pytest.raises(ValueError, match="degree"):
        HermiteBasis.sparse(3, 0)
    with pytest.raises(ValueError, match="max_active"):
        HermiteBasis.sparse(3, 2, 0)
    with pytest.raises(ValueError, match="x: must have shape"):
        HermiteBasis.sparse(3, 2).values(torch.zeros(4, 2))
