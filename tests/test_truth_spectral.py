"""Spectral module's ground truths and metrics pinned to independent formulas.

Gaussian mixtures against ``torch.distributions`` (density, score by autograd, moments by
the law of total covariance, the change of variables of an affine map), the OU marginal and
Tweedie's denoiser of Gaussian data in closed form, and the sample metrics written out as
plain double sums. Each test names the source mutations it was checked to catch (see
docs/mutation.md).
"""

import math
import types

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from samplegrad import spectral
from samplegrad.spectral.affine import Affine
from samplegrad.spectral.gaussians import GaussianMixture
from samplegrad.spectral.metrics import (
    energy_distance,
    mmd_rbf,
    sample_metrics,
    sliced_wasserstein,
)
from samplegrad.spectral.samplers import sample_probability_flow, sampling_times, tweedie_denoise

DT = torch.float64


def _mixture(seed=0, c=3, d=2):
    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(torch.randn(c, generator=g, dtype=DT), 0)
    mu = 2 * torch.randn(c, d, generator=g, dtype=DT)
    q = torch.randn(c, d, d, generator=g, dtype=DT)
    cov = q @ q.transpose(1, 2) / d + 0.3 * torch.eye(d, dtype=DT)
    return GaussianMixture(w, mu, cov)


def _torch_mixture(gm):
    return MixtureSameFamily(Categorical(probs=gm.weights), MultivariateNormal(gm.means, gm.covs))


def _total_moments(gm):
    """Mean and covariance by the law of total covariance, E[x x^T] - m m^T."""
    m = (gm.weights[:, None] * gm.means).sum(0)
    second = (gm.weights[:, None, None]
              * (gm.covs + gm.means[:, :, None] * gm.means[:, None, :])).sum(0)
    return m, second - m[:, None] * m[None, :]


def test_mixture_density_and_score_match_torch_distributions():
    # catches: the quadratic form's 1/2 or sign, the log-determinant's 1/2, the 2 pi term,
    # the score's sign, responsibilities not normalized, log weights dropped
    gm = _mixture()
    x = torch.randn(50, 2, dtype=DT, generator=torch.Generator().manual_seed(1)) * 2
    ref = _torch_mixture(gm)
    torch.testing.assert_close(gm.log_prob(x), ref.log_prob(x), rtol=1e-10, atol=1e-10)
    xr = x.clone().requires_grad_()
    g, = torch.autograd.grad(ref.log_prob(xr).sum(), xr)
    torch.testing.assert_close(gm.score(x), g, rtol=1e-9, atol=1e-10)


def test_mixture_moments_and_ou_marginal():
    # moments by the law of total covariance; the OU marginal at t is the law of
    # e^{-t} x + sqrt(1 - e^{-2t}) z: mean e^{-t} m, covariance e^{-2t} C + (1 - e^{-2t}) I.
    # catches: the between-component term dropped or with a sign error, weights not
    # applied, e^{-t} where e^{-2t} belongs (and conversely)
    gm = _mixture(seed=2, d=3)
    m, c = gm.moments()
    m_ref, c_ref = _total_moments(gm)
    torch.testing.assert_close(m, m_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)
    t = 0.4
    mt, ct = gm.ou_marginal(t).moments()
    s = math.exp(-t)
    torch.testing.assert_close(mt, s * m_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ct, s * s * c_ref + (1 - s * s) * torch.eye(3, dtype=DT),
                               rtol=1e-12, atol=1e-12)


def test_affine_map_is_the_law_of_w_times_x_minus_mean():
    # change of variables: log p_y(W (x - a)) = log p_x(x) - log |det W|.
    # catches: W^T where W belongs, the shift added instead of subtracted, covariances not
    # transformed on both sides
    gm = _mixture(seed=3)
    a = torch.tensor([0.5, -1.0], dtype=DT)
    w = torch.tensor([[1.5, 0.4], [-0.3, 0.8]], dtype=DT)
    y_law = gm.affine(a, w)
    x = torch.randn(40, 2, dtype=DT, generator=torch.Generator().manual_seed(4))
    y = (x - a) @ w.T
    expected = gm.log_prob(x) - torch.linalg.slogdet(w)[1]
    torch.testing.assert_close(y_law.log_prob(y), expected, rtol=1e-10, atol=1e-10)


def test_standardized_and_random_mixtures_have_zero_mean_identity_covariance():
    # catches: the whitening map with ev**0.5 instead of ev**-0.5, the mean not removed,
    # random_mixture ignoring standardize, separation or its seed
    for gm in (_mixture(seed=5).standardized(), spectral.random_mixture(3, 4, seed=1)):
        m, c = _total_moments(gm)
        torch.testing.assert_close(m, torch.zeros_like(m), rtol=0, atol=1e-10)
        torch.testing.assert_close(c, torch.eye(len(m), dtype=DT), rtol=0, atol=1e-10)
    raw1 = spectral.random_mixture(2, 3, separation=1.0, seed=7, standardize=False)
    raw2 = spectral.random_mixture(2, 3, separation=2.0, seed=7, standardize=False)
    torch.testing.assert_close(raw2.means, 2 * raw1.means)
    torch.testing.assert_close(raw2.covs, raw1.covs)
    assert raw1.weights.shape == (3,) and abs(float(raw1.weights.sum()) - 1) < 1e-12
    other = spectral.random_mixture(2, 3, separation=1.0, seed=8, standardize=False)
    assert not torch.allclose(other.means, raw1.means)
    assert (torch.linalg.eigvalsh(raw1.covs) > 0.39).all()  # 0.4 I plus a PSD part


def test_tweedie_denoiser_is_the_posterior_mean_of_gaussian_data():
    # data N(m, s^2 I): x_t = e^{-t} x_0 + sqrt(1 - e^{-2t}) z, so
    # E[x_0 | x_t] = m + s^2 e^{-t} (x_t - e^{-t} m) / v_t, v_t = e^{-2t} s^2 + 1 - e^{-2t}.
    # catches: 1 - e^{-t} for 1 - e^{-2t}, the division by e^{-t} turned into a product
    m, s2, t = 0.8, 2.5, 0.6
    e = math.exp(-t)
    vt = e * e * s2 + 1 - e * e

    def score(x, time):
        assert time == t
        return -(x - e * m) / vt

    x = torch.randn(30, 2, dtype=DT, generator=torch.Generator().manual_seed(6))
    expected = m + s2 * e * (x - e * m) / vt
    torch.testing.assert_close(tweedie_denoise(score, x, t), expected, rtol=1e-12, atol=1e-12)


S2 = torch.tensor([0.3, 2.0], dtype=DT)  # per-coordinate data variances of N(0, diag(S2))


def _var_t(t, s2=S2):
    return math.exp(-2 * t) * s2 + 1 - math.exp(-2 * t)


def test_probability_flow_is_second_order_on_gaussian_data():
    # for N(0, s^2) data the probability-flow ODE is linear: y(t_min) = y(t_max) *
    # sqrt(v(t_min) / v(t_max)), v(t) = e^{-2t} s^2 + 1 - e^{-2t}. Heun's method is second
    # order: 0.08% relative error at 100 steps, 4x less per halving (measured; an Euler
    # predictor of the wrong sign is first order, 0.8%).
    # catches: the predictor's sign, the corrector's 1/2, the drift y + s(y, t) with a
    # wrong sign, a step skipped
    def score(x, t):
        return -x / _var_t(t)

    y = torch.randn(5, 2, dtype=DT, generator=torch.Generator().manual_seed(9))
    exact = y * (_var_t(1e-3) / _var_t(8.0)).sqrt()
    err = {}
    for n in (50, 100):
        out = sample_probability_flow(score, y, sampling_times(n, 8.0, 1e-3),
                                      show_progress=False)
        err[n] = float(((out - exact) / exact).abs().max())
    assert err[100] < 2e-3 and err[50] > 3 * err[100], err


def test_spectral_sample_runs_the_chosen_sampler_in_the_latent_space_and_decodes():
    # a model with a 1-d latent (PCA-like W (1, 2)) whose latent law is N(0, s^2): the ODE
    # path is the linear map above, Tweedie's denoiser is s^2 e^{-t} y / v(t), and the
    # decoded sample is y W_inv^T + mean. The SDE path draws N(0, s^2) in the latent
    # (4000 draws: variance within 5 standard errors plus the discretization bias).
    # catches: the latent width taken from W's second axis, the sampler choice inverted,
    # the generator ignored, denoise not applied or applied with the wrong time, no decode
    s2 = torch.tensor([1.7], dtype=DT)
    mean = torch.tensor([0.5, -1.0], dtype=DT)
    w = torch.tensor([[0.6, 0.8]], dtype=DT)
    model = types.SimpleNamespace(affine=Affine(mean, w, w.T.clone()),
                                  latent_score=lambda y, t: -y / _var_t(t, s2))
    g = torch.Generator().manual_seed(10)
    t_min = 0.05  # large enough for Tweedie's step to matter
    x = spectral.sample(model, 6, n_steps=100, sampler="ode", t_min=t_min, denoise=True,
                        generator=g, show_progress=False)
    y0 = torch.randn(6, 1, dtype=DT, generator=torch.Generator().manual_seed(10))
    y = y0 * (_var_t(t_min, s2) / _var_t(8.0, s2)).sqrt()
    y = s2 * math.exp(-t_min) * y / _var_t(t_min, s2)  # E[y_0 | y_t_min]
    torch.testing.assert_close((x - mean) @ w.T, y, rtol=2e-3, atol=0)  # the latent, |w| = 1
    torch.testing.assert_close(x, ((x - mean) @ w.T) @ w + mean)  # decoded: on the line
    xs = spectral.sample(model, 4000, n_steps=100, sampler="sde",
                         generator=torch.Generator().manual_seed(11), show_progress=False)
    lat = (xs - mean) @ w.T
    torch.testing.assert_close(xs, lat @ w + mean)  # on the decoded line
    var = float(lat.var())
    assert abs(var - 1.7) < 5 * 1.7 * math.sqrt(2 / 3999) + 0.05 * 1.7, var


def _hermite(n, y):
    """Normalized probabilists' Hermite polynomial He_n(y) / sqrt(n!) (numpy's hermeval)."""
    c = np.zeros(n + 1)
    c[n] = 1.0
    return torch.from_numpy(np.polynomial.hermite_e.hermeval(y.numpy(), c)) / math.sqrt(
        math.factorial(n))


def test_perturbative_model_is_the_decayed_data_average():
    # docs/methods.md#perturbative: a_k(t) = e^{-lambda_k t} E_data[phi_k], with phi_n =
    # He_n / sqrt(n!) in 1-d (lambda = n); coefficients interpolate linearly in log t;
    # the latent score is -y + sum_n a_n sqrt(n) phi_{n-1}(y).
    # catches: e^{+lambda t}, e^{-t / lambda}, the data average divided instead of
    # multiplied, the log-t interpolation weights swapped, the score's -y or its sign
    g = torch.Generator().manual_seed(12)
    y = torch.cat([0.7 * torch.randn(1500, 1, generator=g, dtype=DT) + 0.5,
                   0.5 * torch.randn(500, 1, generator=g, dtype=DT) - 1.0])
    times = torch.tensor([0.1, 0.5, 2.0], dtype=DT)
    model = spectral.fit(y, times=times, degree=4, max_active=1, method="perturbative")
    lam = [int(v) for v in model.basis.eigenvalues.tolist()]
    assert sorted(lam) == [1, 2, 3, 4]
    avg = torch.stack([_hermite(n, y[:, 0]).mean() for n in lam])
    for t in times.tolist():
        expected = torch.exp(-t * torch.tensor(lam, dtype=DT)) * avg
        torch.testing.assert_close(model.coefficients(t), expected, rtol=1e-10, atol=1e-12)
    t_mid = math.sqrt(0.1 * 0.5)  # halfway in log t
    torch.testing.assert_close(model.coefficients(t_mid),
                               0.5 * (model.coefficients(0.1) + model.coefficients(0.5)))
    yq = torch.linspace(-1.0, 1.0, 7, dtype=DT)[:, None]  # inside the data range: no clamping
    a = model.coefficients(0.5)
    expected = -yq[:, 0] + sum(a[i] * math.sqrt(n) * _hermite(n - 1, yq[:, 0])
                               for i, n in enumerate(lam))
    torch.testing.assert_close(model.latent_score(yq, 0.5)[:, 0], expected, rtol=1e-9,
                               atol=1e-12)


def _anisotropic(n=400, seed=13):
    g = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[2.0, 0.0, 0.0], [1.2, 0.5, 0.0], [-0.3, 0.4, 0.2]], dtype=DT)
    return torch.randn(n, 3, generator=g, dtype=DT) @ mix + torch.tensor([1.0, -2.0, 0.5],
                                                                        dtype=DT)


@pytest.mark.parametrize("kind", ["none", "standardize", "zca", "pca"])
def test_affine_fit_whitens_and_decode_inverts(kind):
    # standardize: per-coordinate mean 0 and unbiased std 1; zca: identity sample covariance
    # with a symmetric W = Cov^{-1/2}; pca (2 of 3 components): identity covariance of the
    # top-2 whitened components, decode(encode(x)) the projection onto their span.
    # catches: the mean added, std over the wrong axis, 1 * sd for 1 / sd, n for n - 1,
    # eigenvalues' sqrt for rsqrt, the kind tests inverted, the component count ignored
    x = _anisotropic()
    k = 2 if kind == "pca" else None
    aff = Affine.fit(x, kind, n_components=k)
    y = aff.encode(x)
    xc = x - x.mean(0)
    if kind == "none":
        torch.testing.assert_close(y, x)
    elif kind == "standardize":
        torch.testing.assert_close(y.mean(0), torch.zeros(3, dtype=DT), rtol=0, atol=1e-12)
        torch.testing.assert_close(y.std(0), torch.ones(3, dtype=DT))
        torch.testing.assert_close(aff.W, torch.diag(1 / xc.std(0)))
    else:
        cov = y.T @ y / (len(y) - 1)
        torch.testing.assert_close(cov, torch.eye(y.shape[1], dtype=DT), rtol=0, atol=1e-10)
        if kind == "zca":
            torch.testing.assert_close(aff.W, aff.W.T)
        else:
            assert y.shape[1] == 2
            ev, vec = torch.linalg.eigh(xc.T @ xc / (len(x) - 1))
            top = vec[:, -2:]  # the two largest principal directions
            proj = xc @ top @ top.T + x.mean(0)
            torch.testing.assert_close(aff.decode(y), proj, rtol=1e-9, atol=1e-9)
            return
    torch.testing.assert_close(aff.decode(y), x, rtol=1e-10, atol=1e-10)


def test_solve_system_is_the_ridge_regularized_solve():
    # (A + ridge mean(diag A) I) a = b; cond = largest / smallest eigenvalue of that matrix;
    # an indefinite matrix (Cholesky fails) falls back to least squares with cond = inf.
    # catches: the ridge subtracted or divided, K from the wrong axis, the condition number
    # from the wrong eigenvalues, the fallback taken on success
    from samplegrad.spectral.system import solve_system

    g = torch.Generator().manual_seed(14)
    q = torch.randn(5, 5, generator=g, dtype=DT)
    a_mat = q @ q.T + 0.1 * torch.eye(5, dtype=DT)
    b = torch.randn(5, generator=g, dtype=DT)
    ridge = 0.3
    ar = a_mat + ridge * a_mat.diagonal().mean() * torch.eye(5, dtype=DT)
    a, cond = solve_system(a_mat, b, ridge, check_cond=True)
    torch.testing.assert_close(a, torch.linalg.solve(ar, b), rtol=1e-10, atol=1e-12)
    ev = torch.linalg.eigvalsh(ar)
    assert cond == pytest.approx(float(ev[-1] / ev[0]), rel=1e-10)
    _, cond_off = solve_system(a_mat, b, ridge)
    assert math.isnan(cond_off)
    indefinite = torch.diag(torch.tensor([2.0, 1.0, -1.0], dtype=DT))
    a, cond = solve_system(indefinite, torch.ones(3, dtype=DT), 0.0)
    assert cond == math.inf
    torch.testing.assert_close(a, torch.tensor([0.5, 1.0, -1.0], dtype=DT))


# ----------------------------------------------------------------------- metrics
def _pairs():
    g = torch.Generator().manual_seed(7)
    return (torch.randn(12, 2, dtype=DT, generator=g),
            torch.randn(9, 2, dtype=DT, generator=g) + 0.5)


def _plain_mean(f, a, b, skip_diagonal):
    total, count = 0.0, 0
    for i in range(len(a)):
        for j in range(len(b)):
            if skip_diagonal and i == j:
                continue
            total += f(a[i], b[j])
            count += 1
    return total / count


def test_energy_distance_and_mmd_are_the_unbiased_u_statistics():
    # written as plain double sums (diagonals dropped within a set).
    # catches: the factor 2 on the cross term, the diagonal kept (biased), n^2 in place of
    # n (n - 1), the kernel's 1 / (2 h^2) as 1 / h^2, the median bandwidth replaced
    x, y = _pairs()

    def dist(a, b):
        return float((a - b).norm())

    ed = (2 * _plain_mean(dist, x, y, False) - _plain_mean(dist, x, x, True)
          - _plain_mean(dist, y, y, True))
    assert energy_distance(x, y) == pytest.approx(ed, rel=1e-10)
    for h in (0.7, None):
        bw = h
        if bw is None:  # the median distance over the pooled points (all of them here)
            z = torch.cat([x, y])
            bw = float(torch.cdist(z, z).median())

        def k(a, b, bw=bw):
            return math.exp(-float(((a - b) ** 2).sum()) / (2 * bw**2))

        mmd = (_plain_mean(k, x, x, True) + _plain_mean(k, y, y, True)
               - 2 * _plain_mean(k, x, y, False))
        assert mmd_rbf(x, y, bandwidth=h) == pytest.approx(mmd, rel=1e-10)


def test_sliced_wasserstein_in_one_dimension_is_the_quantile_distance():
    # in 1-D every direction is +-1 and W2 between equal-size samples matches sorted
    # values: sqrt(mean (x_(i) - y_(i))^2). A shift c moves it to exactly |c| from itself.
    # catches: the square root dropped, unsorted quantiles, the interpolation weights
    # swapped, directions not normalized
    g = torch.Generator().manual_seed(8)
    x = torch.randn(40, 1, dtype=DT, generator=g)
    y = torch.randn(40, 1, dtype=DT, generator=g) * 2 + 1
    w2 = float(((x.sort(0).values - y.sort(0).values) ** 2).mean().sqrt())
    assert sliced_wasserstein(x, y) == pytest.approx(w2, rel=1e-10)
    assert sliced_wasserstein(x, x + 0.75) == pytest.approx(0.75, rel=1e-10)
    # unequal sizes: linear interpolation of the smaller set's quantiles on a common grid
    y5 = y[:5]
    q = torch.linspace(0, 1, 40, dtype=DT)
    ys = y5.sort(0).values[:, 0]
    pos = q * 4
    lo = pos.floor().long().clamp(max=3)
    yq = (1 - (pos - lo)) * ys[lo] + (pos - lo) * ys[lo + 1]
    expected = float(((x.sort(0).values[:, 0] - yq) ** 2).mean().sqrt())
    assert sliced_wasserstein(x, y5) == pytest.approx(expected, rel=1e-10)
    # one point against many: the point against every quantile of the other set
    one = float(((x[0, 0] - y.sort(0).values[:, 0]) ** 2).mean().sqrt())
    assert sliced_wasserstein(x[:1], y) == pytest.approx(one, rel=1e-10)
    assert sliced_wasserstein(y, x[:1]) == pytest.approx(one, rel=1e-10)


def test_sample_metrics_reports_the_three_metrics():
    # catches: a metric reported under the wrong name, the seed not passed on
    x, y = _pairs()
    m = sample_metrics(x, y, seed=3)
    assert m == {"energy": pytest.approx(energy_distance(x, y), rel=1e-12),
                 "mmd": pytest.approx(mmd_rbf(x, y), rel=1e-12),
                 "sw2": pytest.approx(sliced_wasserstein(x, y, seed=3), rel=1e-12)}
    assert sliced_wasserstein(x, y, seed=3) != sliced_wasserstein(x, y, seed=4)
