"""The linear system: forward-SDE-free expectations against quadrature and Monte Carlo, and the
solution against an explicit least-squares score fit done independently."""

import itertools
import math

import numpy as np
import torch

from samplegrad.spectral.basis import HermiteBasis
from samplegrad.spectral.system import gram_terms, ou_expectation, rhs, solve_system


def _data(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    return 0.3 + x * 0.8 + 0.2 * x.pow(2)  # skewed, non-Gaussian


def test_gram_equals_gauss_hermite_mehler_quadrature():
    """A(t) = E_{x0} E_z[grad phi grad phi^T (e^-t x0 + sigma z)], z by exact tensor quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(6)  # exact: integrand has degree <= 6 per axis
    w = w / w.sum()
    for d, D, m in [(1, 4, 1), (3, 4, 2), (3, 3, 3)]:
        x = _data(40, d)
        B = HermiteBasis.sparse(d, D, m)
        terms = gram_terms(B, x)
        Z = torch.tensor(list(itertools.product(z, repeat=d)), dtype=torch.float64)
        W = torch.tensor([float(np.prod(c)) for c in itertools.product(w, repeat=d)],
                         dtype=torch.float64)
        for t in (0.0, 0.2, 1.5):
            s, sig = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
            xs = (s * x.unsqueeze(1) + sig * Z).reshape(-1, d)
            g = B.gradients(xs)
            ref = torch.einsum("n,nki,nli->kl", W.repeat(len(x)) / len(x), g, g)
            assert torch.allclose(terms.matrix(t), ref, atol=1e-10, rtol=1e-10)
        # t -> infinity: p_t -> N(0, I) and A -> diag(lambda)
        assert torch.allclose(terms.matrix(60.0), torch.diag(B.eigenvalues), atol=1e-12)


def test_forward_sde_free_expectation_agrees_with_monte_carlo():
    """E_{p_t}[g] by the expectation rule vs Monte Carlo over forward-process samples."""
    d, t = 2, 0.4
    x = _data(3000, d, seed=1)
    B = HermiteBasis.sparse(d, 4, 2)
    coef = torch.linspace(-1, 1, B.size, dtype=torch.float64)
    exact = ou_expectation(x, B.dense(), coef, t)
    g = torch.Generator().manual_seed(2)
    s, sig = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    xt = s * x.repeat(20, 1) + sig * torch.randn(60000, d, dtype=torch.float64, generator=g)
    vals = B.values(xt) @ coef
    # the MC noise is from z only (same x0); 5 standard errors of the mean
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean()) - float(exact)) < 5 * se
    # the b vector is the same rule applied to phi_j: lambda_j E_{p_t}[phi_j]
    b = rhs(B.eigenvalues, B.values(x).mean(0), t)
    mc = B.eigenvalues * B.values(xt).mean(0)
    se_b = B.eigenvalues * B.values(xt).std(0) / math.sqrt(len(xt))
    assert ((b - mc).abs() < 5 * se_b + 1e-12).all()


def _mixture_score_1d(y, centers, var):
    r = y.unsqueeze(1) - centers  # (G, N)
    w = torch.softmax(-0.5 * r.pow(2) / var, 1)
    return -(w * r).sum(1) / var, torch.exp(-0.5 * r.pow(2) / var).mean(1) / math.sqrt(
        2 * math.pi * var)


def test_solution_equals_explicit_least_squares_score_fit_1d():
    """The empirical p_t is the mixture (1/N) sum_n N(e^-t x_n, sigma^2), whose score is known;
    minimizing E_{p_t}|s_a - s_true|^2 by weighted least squares on a fine grid (explicit
    score matching) must give the same coefficients as A(t) a = b(t)."""
    x = _data(60, 1, seed=3)
    B = HermiteBasis.sparse(1, 6, 1)
    terms = gram_terms(B, x)
    c = B.values(x).mean(0)
    y = torch.linspace(-12, 12, 48001, dtype=torch.float64)
    dy = float(y[1] - y[0])
    for t in (0.05, 0.5):
        s, var = math.exp(-t), -math.expm1(-2 * t)
        a, _ = solve_system(terms.matrix(t), rhs(B.eigenvalues, c, t), ridge=0.0)
        true, dens = _mixture_score_1d(y, s * x[:, 0], var)
        G = B.gradients(y.unsqueeze(1))[:, :, 0]  # (G, K)
        sw = (dens * dy).sqrt().unsqueeze(1)
        a_ls = torch.linalg.lstsq(sw * G, sw[:, 0] * (true + y)).solution
        assert torch.allclose(a, a_ls, rtol=1e-6, atol=1e-7), (t, a, a_ls)


def test_solution_matches_implicit_score_matching_on_forward_samples_2d():
    """Normal equations of implicit score matching on Monte Carlo samples of p_t, option (ii)."""
    d, t = 2, 0.3
    x = _data(400, d, seed=4)
    B = HermiteBasis.sparse(d, 3, 2)
    a, _ = solve_system(gram_terms(B, x).matrix(t), rhs(B.eigenvalues, B.values(x).mean(0), t),
                        ridge=0.0)
    g = torch.Generator().manual_seed(5)
    s, sig = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    xt = s * x.repeat(250, 1) + sig * torch.randn(100000, d, dtype=torch.float64, generator=g)
    grads = B.gradients(xt)
    A_mc = torch.einsum("nki,nli->kl", grads, grads) / len(xt)
    b_mc = ((xt.unsqueeze(1) * grads).sum(-1) - B.laplacians(xt)).mean(0)
    a_mc = torch.linalg.solve(A_mc, b_mc)
    # same minimizer up to Monte Carlo error in z (100k draws, ~1%): tolerance 3%; the
    # perturbative coefficients differ from these by ~60%, so the check discriminates
    assert (a - a_mc).norm() < 0.03 * a.norm()
