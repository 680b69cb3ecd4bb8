"""Spectral subsystem input handling: every bad value is a ValueError/TypeError naming the
argument, value scans follow the validation switch, legal edge inputs give finite results,
and everything follows the device/dtype of its inputs."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import samplegrad as sg
from samplegrad import spectral
from samplegrad.spectral import (
    Affine,
    GaussianMixture,
    HermiteBasis,
    basis_size,
    energy_distance,
    fit,
    mmd_rbf,
    random_mixture,
    sample,
    sample_probability_flow,
    sample_reverse_sde,
    sampling_times,
    sliced_wasserstein,
    solve_system,
    time_grid,
    train_dsm,
    tweedie_denoise,
)


@pytest.fixture(scope="module")
def model():
    data = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    return fit(data, degree=3, max_active=2)


BAD_TIMES = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, -1e-300, "0.1", None,
             True, torch.tensor([0.1, 0.2])]


@pytest.mark.parametrize("t", BAD_TIMES, ids=repr)
def test_bad_times_name_t(model, t):
    x = torch.randn(4, 2)
    for call in (lambda: model.score(x, t), lambda: model.latent_score(x.double(), t),
                 lambda: model.coefficients(t), lambda: model.solve(t),
                 lambda: tweedie_denoise(model.latent_score, x.double(), t)):
        with pytest.raises(ValueError, match=r"^t: must be a finite number > 0"):
            call()


@settings(max_examples=60, deadline=None)
@given(t=st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False),
       rows=st.integers(0, 5), dtype=st.sampled_from([torch.float16, torch.bfloat16,
                                                      torch.float32, torch.float64]))
def test_legal_times_and_dtypes_give_finite_scores_of_the_input_dtype(model, t, rows, dtype):
    x = torch.randn(rows, 2, generator=torch.Generator().manual_seed(rows)).to(dtype)
    s = model.score(x, t)
    assert s.shape == x.shape and s.dtype == dtype and s.device == x.device
    assert torch.isfinite(s).all()
    s0 = model.score(x, torch.tensor(t, dtype=torch.float64))  # a 0-d tensor is a time too
    assert torch.equal(s, s0)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_x_of_the_wrong_shape_names_x(model, shape):
    x = torch.zeros(shape)
    if x.ndim == 2 and x.shape[1] == 2:
        assert model.score(x, 0.5).shape == x.shape
        return
    with pytest.raises(ValueError, match=r"^x: must have shape \(N, 2\)"):
        model.score(x, 0.5)


def test_x_type_dtype_and_values(model):
    with pytest.raises(TypeError, match="^x: must be a torch.Tensor"):
        model.score([[0.0, 1.0]], 0.5)
    with pytest.raises(TypeError, match="^x: must be a floating-point tensor"):
        model.score(torch.zeros(3, 2, dtype=torch.int64), 0.5)
    bad = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match="^x: contains NaN or inf"):
        model.score(bad, 0.5)
    with sg.validation(False):  # the value scan is switchable: no check, NaN in -> NaN out
        assert torch.isnan(model.score(bad, 0.5)).any()


@pytest.mark.parametrize("kw, name", [
    ({"degree": 2.5}, "degree"), ({"degree": 0}, "degree"), ({"degree": True}, "degree"),
    ({"max_active": 0}, "max_active"), ({"ridge": float("nan")}, "ridge"),
    ({"ridge": -1.0}, "ridge"), ({"t_min": 0.0}, "t_min"), ({"t_max": 1e-4}, "t_max"),
    ({"n_times": 1}, "n_times"), ({"method": "nope"}, "method"), ({"whiten": "x"}, "whiten"),
    ({"clamp_sigmas": float("nan")}, "clamp_sigmas"), ({"cond_warn": 0.0}, "cond_warn"),
])
def test_fit_settings_name_the_field(kw, name):
    data = torch.randn(50, 2)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        fit(data, **kw)


def test_fit_arguments():
    data = torch.randn(50, 2)
    with pytest.raises(TypeError, match="^degre: not a setting of fit"):
        fit(data, degre=2)
    with pytest.raises(TypeError, match="^config: must be a SpectralConfig"):
        fit(data, config={"degree": 2})
    with pytest.raises(TypeError, match="^basis: must be a HermiteBasis"):
        fit(data, basis="sparse")
    with pytest.raises(ValueError, match="^basis: has dim 3"):
        fit(data, basis=HermiteBasis.sparse(3, 2))
    with pytest.raises(ValueError, match="^data: must have shape"):
        fit(torch.randn(1, 2))
    with pytest.raises(ValueError, match="^data: must have shape"):
        fit(torch.randn(10))
    with pytest.raises(TypeError, match="^data: must be real numbers"):
        fit(torch.ones(10, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="^data: contains NaN or inf"):
        fit(torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="^data: has 5 samples but the basis has"):
        fit(torch.randn(5, 2), degree=3)
    with pytest.raises(ValueError, match="^times: must be finite positive times, strictly "
                                         "increasing"):
        fit(data, degree=1, times=torch.tensor([0.1, 0.05]))
    with pytest.raises(ValueError, match="^times: must be a 1-D tensor"):
        fit(data, degree=1, times=torch.tensor([0.1]))


def test_sample_arguments(model):
    kw = {"n_steps": 3, "show_progress": False}
    for n in (0, -1, 2.5, float("nan"), True, "3"):
        with pytest.raises(ValueError, match=r"^n: must be an int >= 1"):
            sample(model, n, **kw)
    for n_steps in (0, 1.5, float("nan"), None):
        with pytest.raises(ValueError, match=r"^n_steps: must be an int >= 1"):
            sample(model, 4, n_steps=n_steps, show_progress=False)
    with pytest.raises(ValueError, match="^t_max: must be a finite number > 0"):
        sample(model, 4, t_max=float("nan"), **kw)
    with pytest.raises(ValueError, match="^t_max: must be > t_min"):
        sample(model, 4, t_max=1e-4, **kw)
    with pytest.raises(ValueError, match="^t_min: must be a finite number > 0"):
        sample(model, 4, t_min=0.0, **kw)
    with pytest.raises(ValueError, match="^sampler: must be 'sde' or 'ode'"):
        sample(model, 4, sampler="euler", **kw)
    with pytest.raises(TypeError, match="^denoise: must be True or False"):
        sample(model, 4, denoise=1, **kw)
    with pytest.raises(TypeError, match="^generator: must be a torch.Generator"):
        sample(model, 4, generator=0, **kw)
    with pytest.raises(TypeError, match="^model: must have latent_score and affine"):
        sample(object(), 4, **kw)
    with pytest.raises(ValueError, match=r"^n_steps: must be an int >= 1"):
        sampling_times(0)
    with pytest.raises(ValueError, match=r"^n: must be an int >= 2"):
        time_grid(0.1, 1.0, 2.5)


def test_samplers_catch_what_the_score_function_returns():
    x = torch.randn(6, 2)
    times = sampling_times(4)
    with pytest.raises(ValueError, match=r"^score: returned non-finite values \(NaN or inf\) "
                                         r"at t=8"):
        sample_reverse_sde(lambda y, t: y * math.nan, x, times, show_progress=False)
    with pytest.raises(ValueError, match=r"^score: must return the shape of x, \(6, 2\)"):
        sample_probability_flow(lambda y, t: y.sum(), x, times, show_progress=False)
    with pytest.raises(TypeError, match="^score: must return a tensor"):
        sample_probability_flow(lambda y, t: 0.0, x, times, show_progress=False)
    with pytest.raises(TypeError, match="^score: must be a callable"):
        sample_reverse_sde(None, x, times, show_progress=False)
    with pytest.raises(ValueError, match="^times: must be finite positive times, strictly "
                                         "decreasing"):
        sample_reverse_sde(lambda y, t: -y, x, times.flip(0), show_progress=False)
    with pytest.raises(ValueError, match="^x: must have shape"):
        sample_reverse_sde(lambda y, t: -y, torch.randn(6), times, show_progress=False)
    # switched off: no scan, the NaN flows through (the documented trade)
    with sg.validation(False):
        out = sample_reverse_sde(lambda y, t: y * math.nan, x, times, show_progress=False)
    assert torch.isnan(out).all()


@settings(max_examples=30, deadline=None)
@given(dim=st.integers(1, 4), degree=st.integers(1, 4), max_active=st.integers(1, 3),
       n=st.integers(1, 6))
def test_bases_of_legal_sizes_evaluate_finite(dim, degree, max_active, n):
    b = HermiteBasis.sparse(dim, degree, max_active)
    assert b.size == basis_size(dim, degree, max_active)
    x = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    coef = torch.randn(b.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = b.grad_combination(x, coef)
    dense = (b.gradients(x) * coef.view(1, -1, 1)).sum(1)
    assert torch.allclose(g, dense, atol=1e-10)
    assert torch.isfinite(b.values(x)).all() and torch.isfinite(b.laplacians(x)).all()


@pytest.mark.parametrize("args, name", [((0, 2), "dim"), ((2, 2.5), "degree"),
                                         ((2, 0), "degree"), ((2, 2, 0), "max_active"),
                                         ((2.0, 2), "dim")])
def test_basis_sizes_name_the_argument(args, name):
    with pytest.raises(ValueError, match=rf"^{name}: must be an int >= 1"):
        HermiteBasis.sparse(*args)
    with pytest.raises(ValueError, match=rf"^{name}: must be an int >= 1"):
        basis_size(*args, *(() if len(args) == 3 else (2,)))


def test_lower_level_pieces_name_their_arguments():
    b = HermiteBasis.sparse(2, 2)
    with pytest.raises(ValueError, match=r"^coef: must be a tensor of shape \(" + str(b.size)):
        b.grad_combination(torch.randn(3, 2), torch.randn(b.size + 1))
    with pytest.raises(ValueError, match="^ridge: must be a finite number >= 0"):
        solve_system(torch.eye(2), torch.ones(2), float("nan"))
    with pytest.raises(ValueError, match="^A: must be a square matrix"):
        solve_system(torch.ones(2, 3), torch.ones(2), 0.0)
    with pytest.raises(ValueError, match=r"^b: must have shape \(2,\)"):
        solve_system(torch.eye(2), torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="^kind: must be"):
        Affine.fit(torch.randn(5, 2), "whiten")
    with pytest.raises(ValueError, match="^n_components: must be in"):
        Affine.fit(torch.randn(5, 2), "pca", n_components=3)
    with pytest.raises(ValueError, match="^x: must have shape"):
        Affine.identity(2).encode(torch.randn(3, 3))
    with pytest.raises(ValueError, match="^dim: must be an int >= 1"):
        random_mixture(0)
    with pytest.raises(ValueError, match="^separation: must be a finite number >= 0"):
        random_mixture(2, separation=float("nan"))
    gm = random_mixture(2)
    with pytest.raises(ValueError, match="^n: must be an int >= 1"):
        gm.sample(0)
    with pytest.raises(ValueError, match="^t: must be a finite number >= 0"):
        gm.ou_marginal(-1.0)


def test_metrics_name_their_arguments():
    x, y = torch.randn(5, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="^x: must have at least 2 rows"):
        energy_distance(x[:1], y)
    with pytest.raises(ValueError, match=r"^y: must have shape \(N, 2\)"):
        mmd_rbf(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="^bandwidth: must be a finite number > 0"):
        mmd_rbf(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="^n_projections: must be an int >= 1"):
        sliced_wasserstein(x, y, n_projections=0)
    with pytest.raises(ValueError, match="^y: contains NaN or inf"):
        energy_distance(x, y.clone().fill_(math.nan))
    assert math.isfinite(sliced_wasserstein(x[:1], y[:1]))


def test_neural_baseline_checks():
    data = torch.randn(64, 2)
    with pytest.raises(TypeError, match="^steps_: not a setting of train_dsm"):
        train_dsm(data, steps_=3)
    with pytest.raises(ValueError, match="^data: contains NaN or inf"):
        train_dsm(data.clone().fill_(math.nan), steps=2, show_progress=False)
    m = train_dsm(data, steps=2, batch=8, hidden=8, layers=1, show_progress=False)
    with pytest.raises(ValueError, match="^t: must be a finite number > 0"):
        m.score(torch.randn(3, 2), float("nan"))
    with pytest.raises(ValueError, match=r"^x: must have shape \(N, 2\)"):
        m.score(torch.randn(3, 3), 0.5)
    assert sample(m, 3, n_steps=2, show_progress=False).shape == (3, 2)


def test_samples_and_metrics_are_reproducible_and_finite(model):
    a = sample(model, 64, n_steps=20, generator=torch.Generator().manual_seed(3),
               show_progress=False)
    b = sample(model, 64, n_steps=20, generator=torch.Generator().manual_seed(3),
               show_progress=False)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    c = sample(model, 64, n_steps=20, sampler="ode", denoise=True,
               generator=torch.Generator().manual_seed(3), show_progress=False)
    assert torch.isfinite(c).all()


def test_no_value_checks_while_switched_off_still_checks_shapes(model):
    with sg.validation(False):
        with pytest.raises(ValueError, match="^x: must have shape"):
            model.score(torch.randn(3, 5), 0.5)
        with pytest.raises(ValueError, match="^t: must be a finite number > 0"):
            model.score(torch.randn(3, 2), -1.0)  # a Python number: checked for free


def test_cuda_generator_for_cpu_samples_is_named(model):
    if not torch.cuda.is_available():
        pytest.skip("needs a second device type")
    with pytest.raises(ValueError, match="^generator: is on cuda"):
        sample(model, 4, n_steps=2, generator=torch.Generator(device="cuda"),
               show_progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_sample_and_metrics_follow_the_data_device():
    dev = torch.device("cuda")
    data = torch.randn(400, 2, device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = fit(data, degree=3, whiten="zca")
    assert m.device.type == "cuda" and m.basis.coords.device.type == "cuda"
    x = sample(m, 32, n_steps=5, generator=torch.Generator(device=dev).manual_seed(0),
               show_progress=False)
    assert x.device.type == "cuda" and torch.isfinite(x).all()
    assert m.score(x.float(), 0.3).device.type == "cuda"
    with pytest.raises(ValueError, match="^x: is on cpu but the model is on cuda"):
        m.score(x.cpu(), 0.3)
    gm = GaussianMixture(*(t.to(dev) for t in (lambda g: (g.weights, g.means, g.covs))(
        random_mixture(2))))
    y = gm.sample(16, torch.Generator(device=dev).manual_seed(0))
    assert y.device.type == "cuda" and gm.ou_score(y, 0.2).device.type == "cuda"
    assert math.isfinite(sliced_wasserstein(x, y)) and math.isfinite(energy_distance(x, y))
    assert spectral.train_dsm(data, steps=2, show_progress=False).score(
        data[:4], 0.5).device.type == "cuda"
