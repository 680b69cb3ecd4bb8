"""ARM, DisARM, ARMS, the unordered-set estimator and VIMCO against enumeration.

Every unbiased estimator's replicate mean is compared with ``sg.exact``'s gradient on small
problems, per coordinate, within 5 standard errors of the mean (with ~10-20 coordinates per
problem the family-wise false alarm stays below 1e-4). VIMCO is checked against the gradient
of E[bound] obtained by enumerating every K-tuple of configurations.
"""

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import samplegrad as sg
from samplegrad.categorical import get_method
from samplegrad.categorical.unordered_set import _beam_search, _log_set_prob

DT = torch.float64
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _problem(shape, seed):
    """Logits ``(B, L, K)`` and a non-linear ``f``: per-element values ``(S, B)`` (element b
    depends on its own L variables only) and their sum ``(S,)``."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=DT)
    w = torch.randn(shape, generator=g, dtype=DT)

    def f_per(x):  # (S, B, L, K) -> (S, B)
        return torch.sin(2 * (x * w).sum(-1)).prod(-1) + (x * w).sum((-1, -2)) ** 2

    return logits, f_per, lambda x: f_per(x).sum(-1)


def _draws(loss, f, logits, reps):
    """``reps`` independent gradient estimates in one call: the problem is replicated along
    a new leading dim and ``f`` returns one value per replicate (per-element credit, so the
    replicates do not interact): ``loss(f_rep, logits_rep)`` -> ``(reps, *logits.shape)``."""
    lg = logits.expand(reps, *logits.shape).clone().requires_grad_()

    def f_rep(x):  # (S, R, *shape) -> (S, R, ...)
        y = f(x.flatten(0, 1))
        return y.reshape(x.shape[0], reps, *y.shape[1:])

    loss(f_rep, lg).backward()
    return lg.grad


def _assert_unbiased(g, truth):
    mean, se = g.mean(0), g.std(0) / math.sqrt(len(g))
    z = ((mean - truth) / se.clamp_min(1e-12)).abs()
    assert (z < 5).all(), z


# ----------------------------------------------------------------------- ARM / DisARM

@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_binary_registry_unbiased_with_per_element_values(name):
    logits, f_per, f_sum = _problem((3, 2, 2), seed=1)
    truth = sg.exact(f_sum, logits)[1]
    for f in (f_sum, f_per):
        g = _draws(lambda fr, lg: sg.surrogate(fr, lg, name, 2), f, logits, 4000)
        _assert_unbiased(g, truth)


@pytest.mark.parametrize("fn", [sg.arm, sg.disarm])
def test_bernoulli_functions_unbiased(fn):
    g0 = torch.Generator().manual_seed(3)
    phi = torch.randn(4, generator=g0, dtype=DT) * 1.5
    w = torch.randn(4, generator=g0, dtype=DT)

    def f_bin(b):  # (S, 4) in {0, 1}
        return torch.cos(3 * (b * w).sum(-1)) + b[:, 0] * b[:, 1]

    cat = torch.stack([torch.zeros_like(phi), phi], -1)  # Bernoulli(phi) as Cat([0, phi])
    truth = sg.exact(lambda x: f_bin(x[..., 1]), cat)[1][..., 1]
    g = _draws(lambda fr, p: fn(fr, p, 4), f_bin, phi, 4000)
    _assert_unbiased(g, truth)


def test_disarm_variance_not_above_arm():
    logits, _, f_sum = _problem((1, 4, 2), seed=4)
    var = {}
    for name in ("arm", "disarm"):
        g = _draws(lambda fr, lg, name=name: sg.surrogate(fr, lg, name, 2), f_sum, logits, 4000)
        var[name] = float(g.var(0).sum())
    # Rao-Blackwellization: never larger; with 4000 draws the estimates are within ~5%
    assert var["disarm"] < 0.9 * var["arm"], var


def test_arms_with_two_samples_and_two_classes_is_disarm_in_distribution():
    logits, _, f_sum = _problem((1, 4, 2), seed=4)
    v = [float(_draws(lambda fr, lg, m=m: sg.surrogate(fr, lg, m, 2), f_sum, logits, 4000)
               .var(0).sum()) for m in ("disarm", "arms")]
    assert abs(v[0] - v[1]) < 0.15 * v[0], v


# ------------------------------------------------------------------------------- ARMS

@pytest.mark.parametrize("n", [2, 3, 4])
def test_arms_unbiased(n):
    logits, f_per, f_sum = _problem((1, 3, 3), seed=2)
    logits[0, 1, 0] = -math.inf  # a masked class
    truth = sg.exact(f_sum, logits)[1]
    g = _draws(lambda fr, lg: sg.arms(fr, lg, n), f_sum, logits, 4000)
    _assert_unbiased(g, truth)
    assert g[:, 0, 1, 0].abs().max() == 0


def test_arms_per_element_unbiased():
    logits, f_per, f_sum = _problem((2, 2, 3), seed=5)
    truth = sg.exact(f_sum, logits)[1]
    _assert_unbiased(_draws(lambda fr, lg: sg.arms(fr, lg, 3), f_per, logits, 4000), truth)


# ---------------------------------------------------------------------- unordered set

def test_beam_search_draws_distinct_configurations_with_gumbel_top_k_inclusion():
    # one variable: Gumbel-top-2 includes class c with a known probability
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=DT)
    lp = p.log().expand(4000, 1, 4)
    idx, _, valid = _beam_search(lp, 2, torch.Generator().manual_seed(0))
    assert valid.all() and (idx[:, 0] != idx[:, 1]).all()
    incl = torch.stack([(idx == c).any(1).any(-1) for c in range(4)], -1).double().mean(0)
    exact = torch.zeros(4, dtype=DT)  # P(c in top 2) = p_c + sum_{d != c} p_d p_c / (1 - p_d)
    for c in range(4):
        exact[c] = p[c] + sum(p[d] * p[c] / (1 - p[d]) for d in range(4) if d != c)
    se = (exact * (1 - exact) / 4000).sqrt()
    assert ((incl - exact).abs() < 5 * se).all(), (incl, exact)


@HYP
@given(m=st.integers(1, 6), seed=st.integers(0, 10_000), excl=st.floats(0.0, 0.5),
       n_invalid=st.integers(0, 2))
def test_set_probability_dynamic_programme_matches_the_sum_over_orders(m, seed, excl,
                                                                       n_invalid):
    # the set's probability by brute force: every order of its valid items, drawn without
    # replacement from a domain whose excluded mass is `excl`
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(m + 2, generator=g, dtype=DT)
    p = (1 - excl) * p / p.sum()  # m set items and 2 others share the non-excluded mass
    lp = p[:m].log()
    valid = torch.ones(m, dtype=torch.bool)
    valid[:min(n_invalid, m - 1)] = False
    items = [float(p[i]) for i in range(m) if valid[i]]
    brute = 0.0
    for order in itertools.permutations(items):
        term, left = 1.0, 1 - excl
        for q in order:
            term *= q / left
            left -= q
        brute += term
    got = _log_set_prob(lp, valid, torch.tensor(excl, dtype=DT))
    assert math.isclose(float(got.exp()), brute, rel_tol=1e-9), (float(got.exp()), brute)


def test_unordered_set_exact_when_the_set_is_everything():
    logits, _, f_sum = _problem((1, 1, 3), seed=6)
    value, truth = sg.exact(f_sum, logits)
    lg = logits.clone().requires_grad_()
    out = sg.unordered_set(f_sum, lg, 3)
    out.backward()
    torch.testing.assert_close(out.detach(), value)
    torch.testing.assert_close(lg.grad, truth)
    # fewer positive-probability configurations than k: the spare rows carry no weight
    lg = torch.tensor([[[0.2, -math.inf, 1.0]]], dtype=DT, requires_grad=True)
    seen = []

    def f(x):
        seen.append(x)
        return f_sum(x)

    out = sg.unordered_set(f, lg, 4)
    out.backward()
    torch.testing.assert_close(out.detach(), sg.exact(f_sum, lg.detach())[0])
    torch.testing.assert_close(lg.grad, sg.exact(f_sum, lg.detach())[1])
    assert seen[0][..., 1].abs().max() == 0


@pytest.mark.parametrize("k", [2, 4])
def test_unordered_set_unbiased(k):
    logits, _, f_sum = _problem((1, 3, 3), seed=7)
    value, truth = sg.exact(f_sum, logits)
    reps = 3000

    def loss(fr, lg):  # one set per replicate (of all its 9 variables): batch_dims=1
        out = sg.unordered_set(fr, lg, k, batch_dims=1)
        # the value is the sum of the replicates' estimates of E[f]: their mean is close
        assert abs(float(out) / reps - float(value)) < 0.1 * abs(float(value)) + 0.05
        return out

    _assert_unbiased(_draws(loss, f_sum, logits, reps), truth)


def test_unordered_set_per_element_sets_unbiased():
    logits, f_per, f_sum = _problem((2, 2, 3), seed=8)
    truth = sg.exact(f_sum, logits)[1]
    g = _draws(lambda fr, lg: sg.surrogate(fr, lg, "unordered_set", 3, batch_dims=2), f_per,
               logits, 3000)
    _assert_unbiased(g, truth)
    with pytest.raises(ValueError, match=r"^f: with batch_dims=1"):
        sg.unordered_set(f_sum, logits, 3, batch_dims=1)


# ------------------------------------------------------------------------------- VIMCO

def _iwae_truth(log_w, logits, k):
    """``(E[bound], d E[bound] / d logits)`` by enumerating every k-tuple of configurations."""
    n_vars, n_cls = logits.shape
    eye = torch.eye(n_cls, dtype=DT)
    cfgs = torch.stack([eye[list(c)] for c in itertools.product(range(n_cls), repeat=n_vars)])
    lg = logits.clone().requires_grad_()
    lq = (cfgs * torch.log_softmax(lg, -1)).sum((-1, -2))  # (C,)
    total = 0
    for t in itertools.product(range(len(cfgs)), repeat=k):
        t = list(t)
        total = total + lq[t].sum().exp() * (torch.logsumexp(log_w(cfgs[t]), 0) - math.log(k))
    total.backward()
    return float(total), lg.grad


def test_vimco_value_is_the_iwae_bound_and_gradient_unbiased():
    g0 = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 2, generator=g0, dtype=DT)
    w = torch.randn(2, 2, generator=g0, dtype=DT)
    log_w = lambda x: 1.5 * torch.tanh((x * w).sum((-1, -2))) - 0.5  # noqa: E731
    # the value: the bound at the drawn samples (same generator seed -> same draws)
    seen = []
    out = sg.vimco(lambda x: seen.append(x) or log_w(x), logits, 3,
                   generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, torch.logsumexp(log_w(seen[0]), 0) - math.log(3))
    value, truth = _iwae_truth(log_w, logits, 3)
    reps = 6000  # one bound per replicate (per-element log-weights), all in one call
    lg = logits.expand(reps, 2, 2).clone().requires_grad_()
    seen = []

    def log_w_rep(x):  # (3, R, 2, 2) -> (3, R)
        seen.append(x)
        return log_w(x.flatten(0, 1)).reshape(3, reps)

    sg.vimco(log_w_rep, lg, 3).backward()
    _assert_unbiased(lg.grad, truth)
    bounds = torch.logsumexp(log_w_rep(seen[0]), 0) - math.log(3)
    assert abs(float(bounds.mean()) - value) < 5 * float(bounds.std()) / math.sqrt(reps)


def test_vimco_per_element_bounds_and_pathwise_parameters():
    logits = torch.randn(3, 2, 4, dtype=DT, requires_grad=True)
    theta = torch.randn(4, dtype=DT, requires_grad=True)
    out = sg.vimco(lambda x: (x * theta).sum((-1, -2)), logits, 5)  # (5, 3): a bound each
    out.backward()
    assert out.shape == () and torch.isfinite(logits.grad).all()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_vimco_is_its_own_kind_in_the_registry():
    assert get_method("vimco").kind == "bound" and "vimco" in sg.methods()
    with pytest.raises(ValueError, match=r"^method: 'vimco' estimates .* bound"):
        sg.surrogate(lambda x: x.sum((-1, -2)), torch.zeros(2, 3), "vimco", 4)
    with pytest.raises(ValueError, match="bound method"):
        sg.sampler("vimco")


# ------------------------------------------------------------------------ input handling

ESTIMATORS = {
    "arm": lambda f, l, n: sg.surrogate(f, l, "arm", n),
    "disarm": lambda f, l, n: sg.surrogate(f, l, "disarm", n),
    "arms": sg.arms,
    "unordered_set": sg.unordered_set,
    "vimco": sg.vimco,
}


@HYP
@given(name=st.sampled_from(list(ESTIMATORS)),
       shape=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       k=st.integers(1, 4), n=st.one_of(st.integers(-1, 5), st.sampled_from([2.5, "3", None])))
def test_inputs_are_checked_by_name(name, shape, k, n):
    logits = torch.randn(*shape, k, dtype=DT, requires_grad=True)
    f = lambda x: (x * torch.arange(k, dtype=DT)).flatten(1).sum(-1)  # noqa: E731
    m = get_method(name)
    ok_n = isinstance(n, int) and m.supports(n) and n <= 8
    ok = ok_n and (m.n_classes is None or k == m.n_classes)
    try:
        out = ESTIMATORS[name](f, logits, n)
    except (ValueError, TypeError) as e:
        assert not ok, e
        args = ("n_samples", "logits") if m.n_classes not in (None, k) else ("n_samples",)
        assert str(e).startswith(args), e
        return
    assert ok
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


def test_bad_shapes_and_knobs_name_the_argument():
    f = lambda x: x.flatten(1).sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match=r"^logits: ARM/DisARM are for binary"):
        sg.surrogate(f, torch.zeros(3, 3), "disarm", 2)
    with pytest.raises(ValueError, match=r"^n_samples: must be an even"):
        sg.arm(f, torch.zeros(3), 3)
    with pytest.raises(ValueError, match=r"^logits: contains NaN"):
        sg.disarm(f, torch.tensor([0.0, math.nan]), 2)
    with pytest.raises(ValueError, match=r"^f: must return one value per sample"):
        sg.arms(lambda x: x.sum(), torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match=r"^log_w: must return one value per sample"):
        sg.vimco(lambda x: x.sum(), torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match=r"^batch_dims:"):
        sg.unordered_set(f, torch.zeros(2, 3), 2, batch_dims=2)
    with pytest.raises(ValueError, match=r"^n_samples: the unordered-set"):
        sg.unordered_set(f, torch.zeros(2, 3), 9)
    with pytest.raises(ValueError, match=r"^n_samples:"):
        sg.surrogate(f, torch.zeros(2, 3), "arms", 1)
    with pytest.raises(TypeError, match=r"^generator:"):
        sg.arms(f, torch.zeros(2, 3), 2, generator=3)


@pytest.mark.parametrize("name", ["arm", "disarm", "arms", "unordered_set"])
def test_generator_makes_draws_reproducible_and_dtype_kept(name):
    logits = torch.randn(3, 2, dtype=torch.float32, requires_grad=True)
    f = lambda x: (x * torch.arange(2.0)).sum((-1, -2)) ** 2  # noqa: E731
    grads = []
    for _ in range(2):
        logits.grad = None
        sg.surrogate(f, logits, name, 2, generator=torch.Generator().manual_seed(4)).backward()
        grads.append(logits.grad.clone())
    assert torch.equal(grads[0], grads[1]) and grads[0].dtype == torch.float32


@pytest.mark.parametrize("name", ["arm", "disarm", "arms", "unordered_set", "vimco"])
def test_torch_func_grad_and_vmap(name):
    w = torch.linspace(-1, 2, 24, dtype=DT).reshape(3, 4, 2)
    f = lambda x: ((x * w).sum(-1) ** 2).sum((-1, -2))  # noqa: E731
    loss = {"arm": lambda l: sg.surrogate(f, l, "arm", 2),
            "disarm": lambda l: sg.surrogate(f, l, "disarm", 4),
            "arms": lambda l: sg.arms(f, l, 3),
            "unordered_set": lambda l: sg.unordered_set(f, l, 3),
            "vimco": lambda l: sg.vimco(f, l, 3)}[name]
    logits = torch.randn(3, 4, 2, dtype=DT)
    assert torch.isfinite(torch.func.grad(loss)(logits)).all()
    g = torch.func.vmap(torch.func.grad(loss), randomness="different")(
        logits.expand(2, 3, 4, 2).clone())
    assert g.shape == (2, 3, 4, 2) and torch.isfinite(g).all()


@pytest.mark.parametrize("field, value", [("min_samples", 0), ("min_samples", 1.5),
                                          ("even_samples", 1), ("n_classes", 1),
                                          ("max_samples", 0), ("n_classes", "2")])
def test_method_rejects_bad_sample_and_class_fields(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        sg.Method("bad", "score", sg.rloo, **{field: value})
    assert sg.Method("ok", "score", sg.rloo, min_samples=2, max_samples=2).supports(2)
