"""Reward tilting of spectral score models (``samplegrad.spectral.tilt``) and the spectral
noise model for Implicit Diffusion finetuning (``SpectralEps``).

Ground truth: a Gaussian mixture ``sum_c pi_c N(mu_c, S_c)`` tilted by a linear reward
``R(x) = a.x`` at temperature ``lam`` is the mixture with means ``mu_c + S_c a / lam`` and
weights ``∝ pi_c exp(a.mu_c / lam + a.S_c a / (2 lam^2))``; its OU marginals and scores are
closed-form (``GaussianMixture.ou_score``).
"""

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplegrad import spectral
from samplegrad.diffusion import linear_alpha_bars, sampling_schedule
from samplegrad.implicit.finetune import adjoint_grad, unrolled_loss
from samplegrad.spectral import GaussianMixture, SpectralEps, random_mixture, relative_score_error

A = torch.tensor([1.0, 0.5], dtype=torch.float64)
LAM = 1.0


def tilted_mixture(gm: GaussianMixture, a: torch.Tensor, lam: float) -> GaussianMixture:
    sa = gm.covs @ a  # (C, d)
    logw = gm.weights.log() + gm.means @ a / lam + (sa @ a) / (2 * lam**2)
    return GaussianMixture(torch.softmax(logw, 0), gm.means + sa / lam, gm.covs)


@pytest.fixture(scope="module")
def problem():
    gm = random_mixture(2, 3, 1.0, seed=2)
    g = torch.Generator().manual_seed(0)
    data = gm.sample(4000, g)
    base = spectral.fit(data, degree=4)
    tilted, info = spectral.tilt(base, lambda x: x @ A, LAM, data=data)
    return gm, tilted_mixture(gm, A, LAM), data, base, tilted, info, g


@pytest.mark.parametrize("t", [0.02, 0.1, 0.5, 1.0])
def test_tilted_score_matches_closed_form_tilted_mixture(problem, t):
    gm, truth, data, base, tilted, info, _ = problem
    g = torch.Generator().manual_seed(int(100 * t))
    x = truth.ou_marginal(t).sample(2000, g)
    err_tilt = relative_score_error(tilted.score(x, t), truth.ou_score(x, t))
    err_untilted = relative_score_error(base.score(x, t), truth.ou_score(x, t))
    # the plain fit's own accuracy (its error against the untilted truth on its own p_t)
    y = gm.ou_marginal(t).sample(2000, g)
    err_plain = relative_score_error(base.score(y, t), gm.ou_score(y, t))
    # measured (seeds fixed): tilt/untilted <= 0.31, tilt/plain <= 1.7 over these t
    assert err_tilt < 0.45 * err_untilted, (err_tilt, err_untilted)
    assert err_tilt < 2.5 * err_plain + 0.01, (err_tilt, err_plain)


def test_tilt_info_estimates_reward_and_kl(problem):
    gm, truth, data, _, _, info, _ = problem
    r = data @ A
    w = info["weights"]
    assert w.shape == (4000,) and abs(float(w.sum()) - 1) < 1e-12
    assert info["ess"] == pytest.approx(1 / float(w.pow(2).sum()))
    assert 0 < info["ess_fraction"] < 1 and info["n_samples"] == 4000
    # self-normalized IS standard error (delta method) of sum w R
    se = float((w.pow(2) * (r - info["tilted_reward"]).pow(2)).sum().sqrt())
    true_reward = float((truth.weights * (truth.means @ A)).sum())
    assert abs(info["tilted_reward"] - true_reward) < 5 * se
    log_z = float(torch.logsumexp(gm.weights.log() + gm.means @ A / LAM
                                  + ((gm.covs @ A) @ A) / (2 * LAM**2), 0))
    true_kl = true_reward / LAM - log_z
    assert abs(info["kl"] - true_kl) < 5 * se / LAM + 0.02  # + the log-normalizer's error


@pytest.mark.parametrize("from_model", [False, True])
def test_constant_reward_gives_the_plain_fit_exactly(problem, from_model):
    _, _, data, base, _, _, _ = problem
    data = data[:600]
    plain = spectral.fit(data, degree=3)
    src, kw = (plain, {"data": data}) if from_model else (data, {"degree": 3})
    model, info = spectral.tilt(src, lambda x: torch.full((x.shape[0],), 2.5,
                                                          dtype=x.dtype), 0.3, **kw)
    assert info["uniform"] and info["ess"] == pytest.approx(600)
    assert torch.equal(model.coefs, plain.coefs) and torch.equal(model.c, plain.c)
    x = data[:50]
    assert torch.equal(model.score(x, 0.1), plain.score(x, 0.1))


def test_degenerate_weights_warn_with_lam_and_ess(problem):
    _, _, data, base, _, _, _ = problem
    with pytest.warns(RuntimeWarning, match=r"lam=0\.01.*effective sample size"):
        _, info = spectral.tilt(base, data @ A, 0.01, data=data)
    assert info["ess"] < 0.1 * data.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spectral.tilt(base, data @ A, 3.0, data=data)  # ESS ~ 90%: quiet


def test_tilt_follows_float32_data():
    gm = random_mixture(2, 2, 1.0, seed=0)
    data = gm.sample(500, torch.Generator().manual_seed(0)).float()
    model, info = spectral.tilt(data, lambda x: x[:, 0], 2.0, degree=3)
    s = model.score(data[:10], 0.3)
    assert s.dtype == torch.float32 and s.device == data.device
    assert info["weights"].device == data.device


# ---------------------------------------------------------------- input validation
@pytest.fixture(scope="module")
def small():
    data = random_mixture(2, 2, 1.0, seed=1).sample(200, torch.Generator().manual_seed(1))
    return data, spectral.fit(data, degree=2)


@settings(max_examples=25, deadline=None)
@given(lam=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                     st.booleans(), st.text(max_size=2)))
def test_lam_validation(small, lam):
    data, base = small
    ok = (not isinstance(lam, (bool, str)) and math.isfinite(lam) and lam > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tiny lam degenerates: tested above
        if ok:
            _, info = spectral.tilt(base, lambda x: x[:, 0], lam, data=data)
            assert 1 - 1e-9 <= info["ess"] <= 200 + 1e-9 and math.isfinite(info["kl"])
        else:
            with pytest.raises(ValueError, match="^lam: "):
                spectral.tilt(base, lambda x: x[:, 0], lam, data=data)


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(0, 201), min_size=0, max_size=3))
def test_reward_shape_validation(small, shape):
    data, base = small
    out = torch.zeros(shape, dtype=torch.float64)
    if tuple(shape) == (200,):
        spectral.tilt(base, out, 1.0, data=data)
        return
    with pytest.raises(ValueError, match=r"^reward: must give one value per data row, "
                                         r"shape \(200,\)"):
        spectral.tilt(base, lambda x: out, 1.0, data=data)


@pytest.mark.parametrize("bad, err, match", [
    (lambda x: x[:, 0] * math.nan, ValueError, "^reward: gave 200 non-finite"),
    (lambda x: x[:, 0].tolist(), TypeError, "^reward: must return a tensor"),
    ("R", TypeError, "^reward: must be a callable"),
    (lambda x: x[:, 0] > 0, TypeError, "^reward: must give real numbers"),
])
def test_reward_validation(small, bad, err, match):
    data, base = small
    with pytest.raises(err, match=match):
        spectral.tilt(base, bad, 1.0, data=data)


def test_argument_validation(small):
    data, base = small
    r = data[:, 0]
    with pytest.raises(ValueError, match="^data: is required"):
        spectral.tilt(base, r, 1.0)
    with pytest.raises(TypeError, match="^degree: the model's own settings"):
        spectral.tilt(base, r, 1.0, data=data, degree=3)
    with pytest.raises(TypeError, match="^data: give the samples once"):
        spectral.tilt(data, r, 1.0, data=data)
    with pytest.raises(ValueError, match="^data: has 3 coordinates"):
        spectral.tilt(base, lambda x: x[:, 0], 1.0, data=torch.randn(50, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="^ess_warn: "):
        spectral.tilt(base, r, 1.0, data=data, ess_warn=1.5)
    with pytest.raises(TypeError, match="^model: must be a SpectralScoreModel"):
        SpectralEps(data, sampling_schedule(linear_alpha_bars(100), n_steps=3))


# ---------------------------------------------------------------- SpectralEps / finetuning
def test_spectral_eps_is_the_exact_score_at_the_schedule_times(small):
    data, _ = small
    model = spectral.fit(data, degree=3, clamp_sigmas=0.0)
    sched = sampling_schedule(linear_alpha_bars(200), n_steps=5, dtype=torch.float64)
    eps = SpectralEps(model, sched)
    assert torch.equal(eps.coefs, eps.a0) and eps.delta.requires_grad
    y = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for j in range(5):
        tau = sched.timesteps[j].expand(7)
        ab = float(sched.alpha_bar[j])
        t = -0.5 * math.log(ab)
        want = -y + model.basis.grad_combination(y, model.solve(t))
        assert torch.allclose(eps.latent_score(y, tau), want, atol=1e-12)
        assert torch.allclose(eps(y, tau), -math.sqrt(1 - ab) * want, atol=1e-12)


def test_adjoint_gradient_of_the_coefficients_matches_autograd(small):
    """The Implicit Diffusion adjoint through SpectralEps equals autograd through the
    unrolled sampler (float64, same noise, KL term included)."""
    data, base = small
    sched = sampling_schedule(linear_alpha_bars(200), n_steps=4, dtype=torch.float64)
    eps = SpectralEps(base, sched)
    ref = {"delta": eps.delta.detach().clone()}
    params = {"delta": (torch.randn(eps.delta.shape, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(2)) * 0.1
                        ).requires_grad_(True)}
    noise = torch.randn(5, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = noise[-1]
    path = [x]
    with torch.no_grad():
        from samplegrad.diffusion import step_mean
        f = lambda y, t: torch.func.functional_call(eps, params, (y, t))  # noqa: E731
        for j in reversed(range(4)):
            x = step_mean(f, x, j, sched) + sched.sigma[j] * noise[j]
            path.insert(0, x)
    path = torch.stack(path)

    def reward(y):
        return -(eps.decode(y) - 1).pow(2).sum(1)

    grads, _ = adjoint_grad(eps, params, ref, path, sched, reward, kl_weight=0.7)
    loss, _ = unrolled_loss(eps, params, ref, noise, sched, reward, kl_weight=0.7)
    (want,) = torch.autograd.grad(loss, [params["delta"]])
    assert want.abs().max() > 1e-6
    assert torch.allclose(grads["delta"], want, rtol=1e-9, atol=1e-12)


def test_cli_quick_run(tmp_path, monkeypatch):
    from samplegrad_bench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", "spectral-tilt", "--quick", "--sections", "gmm", "--out", "res",
                 "--threads", "1"]) == 0
    got = json.loads((tmp_path / "res" / "spectral_tilt_quick.json").read_text())
    text = json.dumps(got)
    for method in ("tilt", "implicit-spectral", "implicit-ddpm", "truth (marginal KL)"):
        assert method in text
    tilt = next(r for r in got["gmm"]["rows"] if r["method"] == "tilt")
    assert tilt["ESS"] > 0 and tilt["err mean"] > 0
    assert (tmp_path / "res" / "reward_vs_kl_quick.png").exists()
