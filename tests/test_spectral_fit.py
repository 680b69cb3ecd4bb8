"""fit(): exact Gaussian scores, the affine (whitened) variant, samplers, bad input, targets."""

import math

import pytest
import torch

from samplegrad.spectral import (
    GaussianMixture,
    energy_distance,
    fit,
    relative_score_error,
    sample,
    sample_probability_flow,
    sample_reverse_sde,
    sampling_times,
    sliced_wasserstein,
    train_dsm,
)
from samplegrad_bench.tasks.boltzmann import PerturbedGaussian, Phi4Lattice, run_mala

COV = torch.tensor([[1.5, 0.5, 0.0], [0.5, 0.7, 0.1], [0.0, 0.1, 0.6]], dtype=torch.float64)
MEAN = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)


def _gaussian():
    return GaussianMixture(torch.ones(1, dtype=torch.float64), MEAN, COV.unsqueeze(0))


def test_exact_gaussian_score_recovered_with_degree_2_basis():
    """Scores of N(mu, Sigma) under OU are affine: a degree-2 basis contains them exactly, so the
    error is the sampling error of the ~K data moments, O(sqrt(K / N))."""
    g = torch.Generator().manual_seed(0)
    gm = _gaussian()
    n = 20000
    x = gm.sample(n, g)
    model = fit(x, degree=2, max_active=2)
    pert = fit(x, degree=2, max_active=2, method="perturbative")
    tol = 4 * math.sqrt(model.basis.size / n)  # K = 9: about 0.085
    for t in (0.01, 0.3, 1.0):
        xt = gm.ou_marginal(t).sample(4000, g)
        truth = gm.ou_score(xt, t)
        err = relative_score_error(model.score(xt, t), truth)
        assert err < tol, (t, err)
    # on the time grid the interpolated coefficients are the exact solve
    tg = float(model.times[5])
    assert torch.allclose(model.solve(tg), model.coefficients(tg), atol=1e-12)
    # the leading-order perturbative model is far off at small t (Sigma is not close to I)
    xt = gm.ou_marginal(0.01).sample(4000, g)
    assert relative_score_error(pert.score(xt, 0.01), gm.ou_score(xt, 0.01)) > 3 * tol


def test_whitened_variant_transforms_the_score_back():
    """With a ZCA map the latent law is ~N(0, I); the data-space score must be that of
    x_t = m + W^{-1} y_t, i.e. the mixture N(m + e^-t (mu - m), e^-2t Sigma + sigma^2 W^-1 W^-T)."""
    g = torch.Generator().manual_seed(1)
    gm = _gaussian()
    x = gm.sample(20000, g)
    model = fit(x, degree=2, whiten="zca")
    m, Winv = model.affine.mean.double(), model.affine.W_inv.double()
    for t in (0.05, 0.5):
        s, var = math.exp(-t), -math.expm1(-2 * t)
        pt = GaussianMixture(gm.weights, m + s * (gm.means - m),
                             s * s * gm.covs + var * (Winv @ Winv.T))
        xt = pt.sample(4000, g)
        err = relative_score_error(model.score(xt, t), pt.score(xt))
        assert err < 4 * math.sqrt(model.basis.size / 20000), (t, err)


def test_samplers_reproduce_a_gaussian_with_its_exact_score():
    g = torch.Generator().manual_seed(2)
    gm = _gaussian()
    times = sampling_times(200, t_max=8.0, t_min=1e-3)
    n = 3000
    for run in ("sde", "ode"):
        x = torch.randn(n, 3, dtype=torch.float64, generator=g)
        if run == "sde":
            x = sample_reverse_sde(gm.ou_score, x, times, g, show_progress=False)
        else:
            x = sample_probability_flow(gm.ou_score, x, times, show_progress=False)
        # mean: 5 standard errors; covariance: 4 standard errors (sd of a sample variance is
        # var sqrt(2 / n)) plus 0.05 for the time discretization
        assert ((x.mean(0) - MEAN[0]).abs() < 5 * COV.diagonal().sqrt() / math.sqrt(n)).all()
        tol = 4 * math.sqrt(2 / n) * float(COV.diagonal().max()) + 0.05
        assert (torch.cov(x.T) - COV).abs().max() < tol, run


def test_spectral_sampling_end_to_end_on_gaussian_data():
    g = torch.Generator().manual_seed(3)
    gm = _gaussian()
    x = gm.sample(4000, g)
    model = fit(x, degree=2, n_times=16)
    y = sample(model, 2000, n_steps=60, generator=g, show_progress=False)
    ref = gm.sample(2000, g)
    far = gm.sample(2000, g) + 0.5
    assert energy_distance(y, ref) < 0.2 * energy_distance(far, ref)
    assert sliced_wasserstein(y, ref) < 0.5 * sliced_wasserstein(far, ref)


def test_bad_input_raises_value_errors():
    x = torch.randn(500, 3, dtype=torch.float64)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit(bad)
    with pytest.raises(ValueError, match="samples"):
        fit(x[:15], degree=3)  # K = 9 + 9 = 18 > 15
    with pytest.raises(ValueError, match="degree"):
        fit(x, degree=0)
    with pytest.raises(ValueError, match="method"):
        fit(x, method="sgd")
    with pytest.raises(ValueError, match="data: must have shape"):
        fit(x[:, 0])


def test_ill_conditioned_system_warns():
    x = torch.randn(400, 1, dtype=torch.float64)
    # on the line x1 = x2 the gradients of x1 x2 and (x1^2 + x2^2)/2 coincide: A(0) is singular
    # and A(t) has condition number ~ 1/t (~1e12 here)
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        fit(torch.cat([x, x], 1), degree=2, ridge=0.0, t_min=1e-12)


def test_perturbed_gaussian_targets():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 4, dtype=torch.float64, generator=g)
    assert torch.allclose(PerturbedGaussian(4, 0.0).ou_score(x, 0.3), -x, atol=1e-10)
    target = PerturbedGaussian(4, 1.0)
    # at small t the quadrature score tends to the potential's gradient -x - delta x^3
    small = x.clamp(-1.5, 1.5)
    assert torch.allclose(target.ou_score(small, 1e-4), -target.grad_energy(small), atol=0.02)
    exact = target.sample(40000, g)
    mala, rate = run_mala(target, 8000, n_chains=400, n_burn=300, thin=5, show_progress=False)
    assert 0.3 < rate < 0.9
    m2e, m2m = exact.pow(2).mean(), mala.pow(2).mean()
    se = float(mala.pow(2).std()) / math.sqrt(8000 / 5)  # chains are correlated: 5x margin
    assert abs(float(m2e - m2m)) < 5 * se


def test_phi4_gradient_matches_autograd():
    target = Phi4Lattice(side=3, J=0.7, m2=-0.4, g=1.3)
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(target.energy(x).sum(), x)
    assert torch.allclose(target.grad_energy(x.detach()), auto, atol=1e-12)


def test_neural_baseline_learns_a_gaussian_score():
    g = torch.Generator().manual_seed(5)
    gm = _gaussian()
    x = gm.sample(3000, g)
    model = train_dsm(x, steps=150, hidden=32, layers=2, batch=128, lr=5e-3,
                      show_progress=False)
    xt = gm.ou_marginal(0.2).sample(2000, g)
    truth = gm.ou_score(xt, 0.2)
    untrained = relative_score_error(-xt, truth)  # the network starts at the N(0, I) score
    assert relative_score_error(model.score(xt, 0.2), truth) < 0.5 * untrained


def test_safe_extrapolation_clamps_only_the_correction():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3000, 2, dtype=torch.float64, generator=g)
    x = x + 0.3 * x.pow(2)  # skewed: a degree-3 fit has a nonzero cubic correction
    model = fit(x, degree=3)
    t = 0.01
    far = torch.tensor([[40.0, -30.0]], dtype=torch.float64)
    s, sig = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    edge = torch.stack([s * model.hi[0] + 4 * sig, s * model.lo[1] - 4 * sig]).unsqueeze(0)
    expected = -far + model.basis.grad_combination(edge, model.coefficients(t))
    assert torch.allclose(model.latent_score(far, t), expected)
    inside = x[:100]  # inside the box nothing changes
    model.config.clamp_sigmas = 0.0
    unclamped = model.latent_score(inside, t)
    model.config.clamp_sigmas = 4.0
    assert torch.allclose(model.latent_score(inside, t), unclamped)
