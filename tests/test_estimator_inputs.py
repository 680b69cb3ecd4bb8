"""Input handling of the categorical estimators: property tests over shapes, dtypes,
magnitudes, masks and knobs (hypothesis), plus the named edge cases.

The property: every call either raises a ValueError/TypeError whose message starts with the
name of the offending argument, or returns finite values whose hard samples are one-hot with
support only on the non-masked classes, and whose gradients are finite and zero on masked
classes.
"""

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import samplegrad as sg
from samplegrad.categorical import get_method

ARGS = ("logits", "noise", "n_steps", "t1", "tau", "hard", "exact", "variant", "generator",
        "n_samples", "baseline", "f", "method", "probs")
NAMED = re.compile(rf"^({'|'.join(ARGS)}):")
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HYP = settings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def logits_st(draw, allow_all_masked=False):
    batch = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    k = draw(st.integers(1, 7))
    dtype = draw(st.sampled_from(DTYPES))
    top = torch.finfo(dtype).max
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0, 1e4, 1e30, 0.9]))
    scale = top * 0.9 if scale == 0.9 else min(scale, top / 4)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(*batch, k, generator=g, dtype=torch.float64) * 2 - 1) * scale
    mask_p = draw(st.sampled_from([0.0, 0.3, 0.7]))
    mask = torch.rand(*batch, k, generator=g) < mask_p
    if not allow_all_masked:  # keep one class per variable
        keep = torch.randint(0, k, (*batch, 1), generator=g)
        mask.scatter_(-1, keep, False)
    x[mask] = -math.inf
    return x.to(dtype), mask


def _knob(draw, good, bad):
    return draw(st.one_of(good, st.sampled_from(bad))) if draw(st.booleans()) else draw(good)


BAD_INTS = [0, 1, -3, 2.5, math.nan, math.inf, "3", None, True]
BAD_REALS = [0.0, -0.5, 1.5, math.nan, math.inf, -math.inf, "0.5", None]


def check_output(y, mask, hard=True):
    yf = y.detach().double()
    assert torch.isfinite(yf).all()
    assert yf[mask].abs().max() == 0 if mask.any() else True
    if hard:
        assert set(yf.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(yf.sum(-1), torch.ones_like(yf.sum(-1)))
    else:
        assert (yf >= 0).all()
        torch.testing.assert_close(yf.sum(-1), torch.ones_like(yf.sum(-1)), atol=2e-2, rtol=0)


def run_and_check(fn, logits, mask, hard=True):
    lg = logits.clone().requires_grad_()
    try:
        y = fn(lg)
    except (ValueError, TypeError) as e:
        assert NAMED.match(str(e)), f"unnamed error: {e!r}"
        return None
    assert y.shape == logits.shape and y.dtype == logits.dtype
    check_output(y, mask, hard)
    w = torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)
    (grad,) = torch.autograd.grad((y * w).sum(), lg)
    assert grad.dtype == logits.dtype and torch.isfinite(grad.double()).all()
    if mask.any():
        assert grad[mask].abs().max() == 0
    return y


@HYP
@given(data=st.data(), lm=logits_st())
def test_redge_any_input(data, lm):
    logits, mask = lm
    n_steps = _knob(data.draw, st.integers(2, 12), BAD_INTS)
    t1 = _knob(data.draw, st.sampled_from([1e-30, 1e-10, 1e-4, 0.1, 0.5, 0.9, 1.0]), BAD_REALS)
    variant = _knob(data.draw, st.sampled_from(["paper", "cov", "max"]), ["nope", None])
    exact = data.draw(st.booleans())
    hard = data.draw(st.booleans())
    if variant == "max":
        hard = True
    y = run_and_check(lambda l: sg.redge(l, n_steps, t1, hard, variant=variant, exact=exact),
                      logits, mask, hard)
    good = (isinstance(n_steps, int) and not isinstance(n_steps, bool) and n_steps >= 2
            and isinstance(t1, float) and 0 < t1 <= 1 and variant in ("paper", "cov", "max"))
    assert (y is not None) == good


@HYP
@given(data=st.data(), lm=logits_st())
def test_relaxed_any_input(data, lm):
    logits, mask = lm
    which = data.draw(st.sampled_from(["st", "st_soft", "gs", "gs_hard", "reinmax"]))
    tau = _knob(data.draw, st.sampled_from([0.05, 0.5, 1.0, 2.0, 1e3]), BAD_REALS)
    fns = {"st": lambda l: sg.straight_through(l),
           "st_soft": lambda l: sg.straight_through(l, hard=False),
           "gs": lambda l: sg.gumbel_softmax(l, tau),
           "gs_hard": lambda l: sg.gumbel_softmax(l, tau, hard=True),
           "reinmax": lambda l: sg.reinmax(l, tau)}
    hard = which in ("st", "gs_hard", "reinmax")
    y = run_and_check(fns[which], logits, mask, hard)
    if which in ("st", "st_soft"):
        assert y is not None
    elif which == "reinmax":
        assert (y is not None) == (isinstance(tau, float) and 1.0 <= tau < math.inf)
    else:
        assert (y is not None) == (isinstance(tau, float) and 0 < tau < math.inf)


@HYP
@given(data=st.data(), lm=logits_st())
def test_surrogate_any_input(data, lm):
    logits, mask = lm
    method = data.draw(st.sampled_from([m for m in sg.methods() if m != "exact"]))
    n_samples = _knob(data.draw, st.integers(1, 3), BAD_INTS)
    seen = []

    def f(x):
        seen.append(x.detach())
        return (x.double() * torch.arange(x.shape[-1], dtype=torch.float64)).flatten(1).sum(-1)

    lg = logits.clone().requires_grad_()
    try:
        loss = sg.surrogate(f, lg, method=method, n_samples=n_samples)
    except (ValueError, TypeError) as e:
        assert NAMED.match(str(e)), f"unnamed error: {e!r}"
        m = get_method(method)
        assert not (isinstance(n_samples, int) and not isinstance(n_samples, bool)
                    and n_samples >= (2 if method == "rloo" else 1)
                    and m.supports(n_samples, logits.shape[-1]) and m.kind != "bound")
        return
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(lg.grad.double()).all()
    if mask.any():
        assert lg.grad[mask].abs().max() == 0
    x = torch.cat(seen).double()
    assert x[..., mask].abs().max() == 0 if mask.any() else True
    if method not in ("gumbel_soft", "rebar", "relax"):  # those also evaluate f at soft points
        assert set(x.unique().tolist()) <= {0.0, 1.0}


@HYP
@given(lm=logits_st(allow_all_masked=True))
def test_all_masked_variables_are_named(lm):
    logits, mask = lm
    assume(mask.all(-1).any())
    for fn in (sg.redge, sg.straight_through, sg.gumbel_softmax, sg.reinmax):
        with pytest.raises(ValueError, match=r"^logits: has a variable whose classes are all"):
            fn(logits)


@HYP
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       scale=st.sampled_from([0.1, 3.0, 30.0]), n=st.integers(1, 3))
def test_distribution_any_dtype(dtype, shape, scale, n):
    logits = (torch.randn(shape) * scale).to(dtype).requires_grad_()
    for kw in ({"logits": logits}, {"probs": torch.softmax(logits.detach().float(), -1)
                                    .to(dtype)}):
        d = sg.ReDGECategorical(validate_args=True, **kw)
        y = d.rsample((n,))
        assert y.shape == (n, *shape) and y.dtype == dtype
        check_output(y, torch.zeros(y.shape, dtype=torch.bool))
        assert torch.isfinite(d.log_prob(y.detach()).float()).all()
    y.float().sum().backward() if y.requires_grad else None


# ------------------------------------------------------------------- the named edge cases

def test_redge_noise_values_are_checked():
    logits = torch.randn(4, 3)
    for bad in (math.nan, math.inf):
        noise = torch.randn(4, 3)
        noise[1, 2] = bad
        with pytest.raises(ValueError, match=r"^noise: contains non-finite"):
            sg.redge(logits, noise=noise)
        with pytest.raises(ValueError, match=r"^noise: contains non-finite"):
            sg.gumbel_softmax(logits, noise=noise)
    with pytest.raises(ValueError, match=r"^noise: must be floating"):
        sg.redge(logits, noise=torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^noise:"):
        sg.redge(logits, noise=[[0.0] * 3] * 4)
    with pytest.raises(ValueError, match=r"^noise: must have the shape"):
        sg.redge(logits, noise=torch.zeros(3, 4))
    with sg.validation(False):  # switched off: no scan (and no host sync)
        noise = torch.randn(4, 3)
        noise[0, 0] = math.nan
        sg.redge(logits, noise=noise)


@pytest.mark.parametrize("variant", ["paper", "cov", "max"])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("t1", [1e-10, 1e-12, 1e-30])
def test_tiny_t1_is_finite(variant, exact, t1):
    logits = (torch.randn(200, 6) * 2).requires_grad_()
    y = sg.redge(logits, 5, t1, variant=variant, exact=exact)
    (y * torch.randn(200, 6)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    if variant == "max":  # hard samples only
        return
    s = sg.redge(logits.detach(), 5, t1, hard=False, variant=variant, exact=exact,
                 noise=torch.randn(200, 6))
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s.sum(-1), torch.ones(200))
    # the t1 -> 0 limit: the soft sample is (numerically) one-hot
    assert (s.max(-1).values > 0.999).float().mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_logits_are_finite(dtype):
    big = torch.finfo(dtype).max * 0.9
    logits = torch.randn(50, 5, dtype=dtype)
    logits[:, 0], logits[:, 1], logits[10:, 2] = big, -big, big
    logits.requires_grad_()
    w = torch.randn(50, 5, dtype=dtype)
    for fn in (lambda l: sg.gumbel_softmax(l, 0.5), lambda l: sg.gumbel_softmax(l, 0.1, True),
               lambda l: sg.gumbel_softmax(l, 5.0), sg.straight_through, sg.reinmax,
               sg.redge, lambda l: sg.redge(l, 5, 0.3, exact=True),
               lambda l: sg.redge(l, variant="cov"), lambda l: sg.redge(l, variant="max")):
        y = fn(logits)
        (g,) = torch.autograd.grad((y * w).sum(), logits)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
        assert y[:, 1].abs().max() == 0  # -big has probability 0 against +big


def test_reinforce_baseline_is_checked():
    logits = torch.randn(3, 4, requires_grad=True)
    f = lambda x: x.sum((-1, -2))  # noqa: E731
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"^baseline: must be finite"):
            sg.reinforce(f, logits, 2, baseline=bad)
        with pytest.raises(ValueError, match=r"^baseline: contains non-finite"):
            sg.reinforce(f, logits, 2, baseline=torch.tensor(bad))
    with pytest.raises(TypeError, match=r"^baseline:"):
        sg.reinforce(f, logits, 2, baseline="0.5")
    with pytest.raises(ValueError, match=r"^baseline:"):
        sg.surrogate(f, logits, "reinforce", 2, baseline=math.nan)
    assert torch.isfinite(sg.reinforce(f, logits, 2, baseline=torch.tensor(0.5)))


@pytest.mark.parametrize("method", sg.methods())
def test_surrogate_checks_what_f_returns(method):
    if get_method(method).kind == "bound":
        pytest.skip("vimco has its own entry point (tests/test_estimators_unbiased.py)")
    logits = torch.randn(2, get_method(method).n_classes or 3, requires_grad=True)
    with pytest.raises(TypeError, match=r"^f: must return a torch.Tensor"):
        sg.surrogate(lambda x: 1.5, logits, method=method, n_samples=2)
    with pytest.raises(ValueError, match=r"^f: returned non-finite values"):
        sg.surrogate(lambda x: x.sum((-1, -2)) * math.nan, logits, method=method, n_samples=2)
    with pytest.raises(ValueError, match=r"^f: returned non-finite values"):
        sg.surrogate(lambda x: x.sum((-1, -2)) + math.inf, logits, method=method, n_samples=2)
    with pytest.raises(TypeError, match=r"^f: must be callable"):
        sg.surrogate("f", logits, method=method)
    with sg.validation(False):  # off: the NaN goes through (the caller asked for speed)
        assert torch.isnan(sg.surrogate(lambda x: x.sum((-1, -2)) * math.nan, logits,
                                        method=method, n_samples=2))


def test_exact_ignores_f_at_masked_configurations():
    logits = torch.tensor([[0.0, -math.inf, 1.0], [0.5, 0.2, -math.inf]], requires_grad=True)

    def f(x):  # NaN wherever a masked class is used: those configurations have probability 0
        bad = (x[:, 0, 1] + x[:, 1, 2]) > 0
        return torch.where(bad, torch.full_like(bad, math.nan, dtype=x.dtype),
                           (x * torch.arange(3.0)).sum((-1, -2)))

    value = sg.surrogate(f, logits, method="exact")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 2] == 0


@pytest.mark.parametrize("kw,name", [
    ({"n_steps": math.nan}, "n_steps"), ({"n_steps": math.inf}, "n_steps"),
    ({"n_steps": "5"}, "n_steps"), ({"n_steps": 2.5}, "n_steps"), ({"n_steps": True}, "n_steps"),
    ({"t1": math.nan}, "t1"), ({"t1": "0.5"}, "t1"), ({"t1": 0.0}, "t1"),
    ({"hard": "yes"}, "hard"), ({"exact": 0.5}, "exact"), ({"variant": "nope"}, "variant"),
    ({"generator": 3}, "generator"), ({"noise": "x"}, "noise")])
def test_redge_knobs_name_the_argument(kw, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name}:"):
        sg.redge(torch.randn(2, 3), **kw)
    if name in ("n_steps", "t1", "variant", "hard", "exact"):
        with pytest.raises((ValueError, TypeError), match=rf"^{name}:"):
            sg.ReDGECategorical(logits=torch.randn(2, 3), **kw)


@pytest.mark.parametrize("fn,name", [
    (lambda: sg.gumbel_softmax(torch.randn(2, 3), tau=math.nan), "tau"),
    (lambda: sg.gumbel_softmax(torch.randn(2, 3), tau="1"), "tau"),
    (lambda: sg.reinmax(torch.randn(2, 3), tau=0.5), "tau"),
    (lambda: sg.reinmax(torch.randn(2, 3), hard=False), "hard"),
    (lambda: sg.straight_through([1.0, 2.0]), "logits"),
    (lambda: sg.straight_through(torch.zeros(2, 3, dtype=torch.int64)), "logits"),
    (lambda: sg.rloo(lambda x: x.sum((-1, -2)), torch.randn(2, 3), n_samples=math.nan),
     "n_samples"),
    (lambda: sg.rloo(lambda x: x.sum((-1, -2)), torch.randn(2, 3), n_samples=1), "n_samples"),
    (lambda: sg.reinforce(None, torch.randn(2, 3)), "f"),
    (lambda: sg.surrogate(lambda x: x.sum((-1, -2)), torch.randn(2, 3), method=3), "method"),
    (lambda: sg.surrogate(lambda x: x.sum((-1, -2)), torch.randn(2, 3), method="nope"),
     "method"),
    (lambda: sg.surrogate(lambda x: x.sum((-1, -2)), torch.randn(2, 3), tau=0.5), "tau"),
    (lambda: sg.exact(lambda x: x.sum((-1, -2)), torch.randn(30, 4)), "logits"),
    (lambda: sg.sampler("redge", tau=1.0), "tau"),
])
def test_other_arguments_are_named(fn, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name}:"):
        fn()


def test_low_precision_distribution_with_validation():
    """float16/bfloat16 logits: torch's fixed 1e-6 simplex check used to refuse them."""
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        for _ in range(50):
            logits = (torch.randn(8, 30) * 3).to(dtype).requires_grad_()
            d = sg.ReDGECategorical(logits=logits, validate_args=True)
            y = d.rsample((2,))
            assert y.dtype == dtype and torch.isfinite(d.log_prob(y.detach()).float()).all()
            y.float().sum().backward()
            assert torch.isfinite(logits.grad.float()).all()
    with pytest.raises(ValueError):  # still a real check: negative probabilities
        sg.ReDGECategorical(probs=torch.tensor([-0.5, 1.5], dtype=torch.float16),
                            validate_args=True)


# ------------------------------------------------------------------------------ generators

def _estimators():
    f = lambda x: (x * torch.arange(4.0)).sum((-1, -2))  # noqa: E731
    return {
        "redge": lambda l, g: sg.redge(l, generator=g),
        "redge_exact": lambda l, g: sg.redge(l, exact=True, generator=g),
        "redge_cov": lambda l, g: sg.redge(l, variant="cov", generator=g),
        "straight_through": lambda l, g: sg.straight_through(l, generator=g),
        "gumbel_softmax": lambda l, g: sg.gumbel_softmax(l, 0.5, True, generator=g),
        "reinmax": lambda l, g: sg.reinmax(l, generator=g),
        "gumbel_rao": lambda l, g: sg.gumbel_rao(l, generator=g),
        "gst": lambda l, g: sg.gst(l, generator=g),
        "rebar": lambda l, g: sg.rebar(f, l, 4, generator=g),
        "relax": lambda l, g: sg.relax(f, l, 4, control=sg.relax_init(), generator=g),
        "reinforce": lambda l, g: sg.reinforce(f, l, 4, generator=g),
        "rloo": lambda l, g: sg.rloo(f, l, 4, generator=g),
        "surrogate": lambda l, g: sg.surrogate(f, l, "redge_max", 3, generator=g),
        "sampler": lambda l, g: sg.sampler("gumbel_hard")(l, generator=g),
        "rsample": lambda l, g: sg.ReDGECategorical(logits=l).rsample((2,), generator=g),
    }


@pytest.mark.parametrize("name", list(_estimators()))
def test_generator_reproducible_and_leaves_global_rng_alone(name):
    fn = _estimators()[name]
    logits = torch.randn(64, 3, 4)
    state = torch.get_rng_state()
    a = fn(logits, torch.Generator().manual_seed(5))
    b = fn(logits, torch.Generator().manual_seed(5))
    c = fn(logits, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(TypeError, match=r"^generator:"):
        fn(logits, "not a generator")
