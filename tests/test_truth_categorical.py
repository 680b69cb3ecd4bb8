"""Every categorical estimator's formula pinned to an independent truth.

Each truth is written here from the formulas of docs/methods.md, without calling the
helpers under test (explicit Jacobian matrices, a plain DDIM loop, Newton's method for the
DDIM inversion, the peer packages `reinmax` and `redge` where installed). Tolerances are
float64 round-off or derived from the number of draws, so a factor of 2 or a sign error
fails. Each test names, in a comment, the source mutations it was checked to catch (each
was introduced in a private copy of the source and the test failed; see docs/mutation.md).
"""

import math
import types

import pytest
import scipy.stats
import torch

import samplegrad as sg

DT = torch.float64


def jac_softmax(p: torch.Tensor) -> torch.Tensor:
    """``diag(p) - p p^T`` as explicit ``(..., K, K)`` matrices (symmetric)."""
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def matvec(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def _logits_and_upstream(n=64, k=5, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g, dtype=DT) * scale).requires_grad_()
    w = torch.randn(n, k, generator=g, dtype=DT)
    return logits, w


# ----------------------------------------------------------------------- straight-through
def test_straight_through_gradient_is_the_softmax_jacobian():
    # catches: the vjp p * (g - <g, p>) with a flipped sign or without its <g, p> term
    # (softmax_vjp_kn), a gradient through a tempered or detached softmax
    logits, w = _logits_and_upstream()
    y = sg.straight_through(logits)
    g, = torch.autograd.grad((y * w).sum(), logits)
    pi = torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(g, matvec(jac_softmax(pi), w), rtol=1e-12, atol=1e-12)
    # the soft form is the softmax itself, with the same gradient
    s = sg.straight_through(logits, hard=False)
    torch.testing.assert_close(s.detach(), pi, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------- Gumbel-softmax
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_gumbel_softmax_jacobian_is_the_tempered_softmax_jacobian(tau):
    # y = softmax((theta + G) / tau)  =>  dy/dtheta = J(y) / tau, whatever G is.
    # catches: tau multiplied instead of divided (J(y) * tau: a factor tau**2 = 4 off),
    # the Jacobian's sign or its <g, y> term
    logits, w = _logits_and_upstream(seed=1)
    y = sg.gumbel_softmax(logits, tau=tau)
    g, = torch.autograd.grad((y * w).sum(), logits)
    expected = matvec(jac_softmax(y.detach()), w) / tau
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_gumbel_softmax_noise_is_standard_gumbel():
    # tau * log y - theta = G - logsumexp(...): class differences are G_0 - G_1, a difference
    # of two independent standard Gumbels, i.e. standard logistic. A Kolmogorov-Smirnov test
    # on 20k draws: a scale error of 10% already has a p-value far below the 1e-4 threshold.
    # catches: tau multiplied instead of divided in the forward, a wrong Gumbel transform
    # (-log(u) instead of -log(-log(u)); theta - G instead of theta + G)
    tau = 0.7
    theta = torch.tensor([0.4, -0.8, 1.1], dtype=DT)
    y = sg.gumbel_softmax(theta.expand(20_000, 3), tau=tau)
    r = tau * y.log() - theta
    d = (r[:, 0] - r[:, 1]).numpy()
    assert scipy.stats.kstest(d, scipy.stats.logistic.cdf).pvalue > 1e-4
    d = (r[:, 2] - r[:, 1]).numpy()
    assert scipy.stats.kstest(d, scipy.stats.logistic.cdf).pvalue > 1e-4
    # Gumbel-max: the argmax is Cat(pi) (a sign error, theta - G, is symmetric in the
    # differences above but not here: its argmax frequencies are far from pi)
    counts = torch.bincount(y.argmax(-1), minlength=3).double()
    expected = 20_000 * torch.softmax(theta, -1)
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert scipy.stats.chi2.sf(stat, 2) > 1e-4


def test_gumbel_hard_is_the_argmax_with_the_soft_gradient():
    # with the same random stream, hard=True returns argmax of the soft sample (an exact
    # Cat(pi) draw by the Gumbel-max trick) and carries the soft sample's gradient J(y)/tau.
    # catches: tau multiplied in the hard path, a hard draw that is not the argmax of the
    # perturbed logits
    tau = 0.5
    logits, w = _logits_and_upstream(seed=2)
    torch.manual_seed(7)
    y_soft = sg.gumbel_softmax(logits, tau=tau, hard=False).detach()
    torch.manual_seed(7)
    y_hard = sg.gumbel_softmax(logits, tau=tau, hard=True)
    onehot = torch.nn.functional.one_hot(y_soft.argmax(-1), 5).to(DT)
    assert torch.equal(y_hard.detach(), onehot)
    g, = torch.autograd.grad((y_hard * w).sum(), logits)
    torch.testing.assert_close(g, matvec(jac_softmax(y_soft), w) / tau, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------- ReinMax
def _reinmax_draw(tau, seed=3):
    logits, w = _logits_and_upstream(seed=seed)
    h = sg.reinmax(logits, tau=tau)
    g, = torch.autograd.grad((h * w).sum(), logits)
    return logits.detach(), w, h.detach(), g


@pytest.mark.parametrize("tau", [1.0, 1.5])
def test_reinmax_backward_is_the_second_order_formula(tau):
    # docs/methods.md#reinmax: 2 J(pi_half)^T g - 1/2 J(pi)^T g with
    # pi_half = (h + softmax(theta / tau)) / 2, written with explicit matrices.
    # catches: the factor 2 -> 1, the 1/2 -> 1 or its sign, tau multiplied instead of
    # divided (tau = 1.5), the midpoint without its 1/2
    logits, w, h, g = _reinmax_draw(tau)
    assert torch.equal(h.sum(-1), torch.ones(len(h), dtype=DT))
    pi = torch.softmax(logits, -1)
    half = 0.5 * (h + torch.softmax(logits / tau, -1))
    expected = matvec(2 * jac_softmax(half) - 0.5 * jac_softmax(pi), w)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_reinmax_backward_matches_the_reinmax_package():
    # the authors' package (Liu et al.), its backward evaluated at our draw: the same
    # gradient. catches the same mutations as the formula test, against a second source.
    peer = pytest.importorskip("reinmax.reinmax")
    tau = 1.5
    logits, w, h, g = _reinmax_draw(tau, seed=4)
    y_soft = torch.softmax(logits, -1)
    ctx = types.SimpleNamespace(saved_tensors=(h, logits, y_soft, torch.tensor(tau, dtype=DT)))
    g_peer, _ = peer.ReinMax_Auto.backward(ctx, w, torch.zeros_like(w))
    torch.testing.assert_close(g, g_peer, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------- ReDGE
def grid(n_steps, t1):
    """docs/methods.md#redge-sampler: alpha^(0) = 1, then n - 1 points evenly spaced from
    1 - t1 down to 1e-4; sigma = 1 - alpha."""
    alphas = [1.0] + [1.0 - t1 + (1e-4 - (1.0 - t1)) * i / (n_steps - 2)
                      for i in range(n_steps - 1)] if n_steps > 2 else [1.0, 1.0 - t1]
    return alphas, [1.0 - a for a in alphas]


def denoise(theta, x, alpha, sigma):
    return torch.softmax(theta + alpha / sigma**2 * x, -1)


def ddim_forward(theta, seed, n_steps, t1):
    """The plain DDIM loop from the seed (index n-1) down to index 1; returns x^(1)."""
    al, si = grid(n_steps, t1)
    x = seed
    for i in range(n_steps - 1, 1, -1):
        x0 = denoise(theta, x, al[i], si[i])
        eps = (x - al[i] * x0) / si[i]
        x = al[i - 1] * x0 + si[i - 1] * eps
    return x


def ddim_invert(theta, x1, n_steps, t1, iters=60):
    """Exact DDIM inversion by Newton's method, step by step: solve for x^(i) the equation
    ``alpha_{i-1} D(x) + sigma_{i-1} (x - alpha_i D(x)) / sigma_i = x^(i-1)``, with
    ``D(x) = softmax(theta + alpha_i / sigma_i^2 x)``. Its Jacobian
    ``(sigma_{i-1}/sigma_i) I + a c J(D)`` with ``a, c > 0`` is positive definite, so the
    solution is unique."""
    al, si = grid(n_steps, t1)
    target = x1
    k = x1.shape[-1]
    eye = torch.eye(k, dtype=x1.dtype)
    for i in range(2, n_steps):
        b = si[i - 1] / si[i]
        a = al[i - 1] - si[i - 1] * al[i] / si[i]
        c = al[i] / si[i] ** 2
        x = target / b
        for _ in range(iters):
            p = denoise(theta, x, al[i], si[i])
            resid = a * p + b * x - target
            jac = b * eye + a * c * jac_softmax(p)
            x = x - torch.linalg.solve(jac, resid)
        resid = a * denoise(theta, x, al[i], si[i]) + b * x - target
        assert resid.abs().max() < 1e-11
        target = x
    return target


@pytest.mark.parametrize("n_steps,t1", [(2, 0.4), (3, 0.5), (6, 0.3)])
def test_redge_matches_a_plain_ddim_loop(n_steps, t1):
    # soft sample and pathwise gradient with the seed given, against autograd through the
    # plain loop (the default sampler). catches: the denoiser coefficient alpha / sigma^2,
    # the DDIM step coefficients, the grid (an off-by-one in the linspace), any term of the
    # hand-written backward
    logits, w = _logits_and_upstream(n=32, k=4, seed=5)
    eps = torch.randn(32, 4, dtype=DT, generator=torch.Generator().manual_seed(6))
    s = sg.redge(logits, n_steps, t1, hard=False, noise=eps)
    al, si = grid(n_steps, t1)
    s_ref = denoise(logits, ddim_forward(logits, eps, n_steps, t1), al[1], si[1])
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-12)
    g, = torch.autograd.grad((s * w).sum(), logits)
    g_ref, = torch.autograd.grad((s_ref * w).sum(), logits)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_steps,t1", [(3, 0.5), (5, 0.3)])
def test_redge_exact_soft_sample_is_the_posterior_mean_at_the_exact_point(n_steps, t1):
    # exact=True: h ~ Cat(pi), x_t1 = alpha_t1 h + sigma_t1 eps (eps the given noise), soft
    # sample E[x_0 | x_t1] = softmax(theta + alpha_t1 / sigma_t1^2 x_t1). The same random
    # stream gives the same h for hard=True and hard=False.
    # catches: a wrong soft-sample coefficient (another grid index, alpha/sigma instead of
    # alpha/sigma^2), the noise or h scaled by the wrong coefficient
    logits, _ = _logits_and_upstream(n=200, k=4, seed=8)
    eps = torch.randn(200, 4, dtype=DT, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(10)
    h = sg.redge(logits, n_steps, t1, exact=True, noise=eps).detach()
    torch.manual_seed(10)
    s = sg.redge(logits, n_steps, t1, hard=False, exact=True, noise=eps).detach()
    a1, s1 = 1.0 - t1, t1
    expected = torch.softmax(logits.detach() + a1 / s1**2 * (a1 * h + s1 * eps), -1)
    torch.testing.assert_close(s, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_steps,t1", [(3, 0.5), (5, 0.3), (9, 0.5)])
def test_redge_exact_gradient_is_the_pathwise_gradient_of_the_exact_path(n_steps, t1):
    # the exact=True gradient is the DDIM pathwise gradient along the path that starts from
    # the seed DDIM carries exactly to x_t1 (found here by Newton's method, residual below
    # 1e-11), i.e. autograd through the plain forward loop from that seed.
    # catches: an off-by-one in the inversion coefficients, a wrong soft-sample coefficient,
    # any term of the backward
    logits, w = _logits_and_upstream(n=48, k=4, seed=11)
    eps = torch.randn(48, 4, dtype=DT, generator=torch.Generator().manual_seed(12))
    torch.manual_seed(13)
    y = sg.redge(logits, n_steps, t1, exact=True, noise=eps)
    g, = torch.autograd.grad((y * w).sum(), logits)
    x1 = (1 - t1) * y.detach() + t1 * eps
    seed = ddim_invert(logits.detach(), x1, n_steps, t1)
    th = logits.detach().requires_grad_()
    x1_fwd = ddim_forward(th, seed, n_steps, t1)
    torch.testing.assert_close(x1_fwd.detach(), x1, rtol=0, atol=1e-9)
    s = denoise(th, x1_fwd, 1 - t1, t1)
    g_ref, = torch.autograd.grad((s * w).sum(), th)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


def cov_parts(theta):
    """The "cov" forward model's mean pi and floored variance v = max(pi (1 - pi), 0.1)."""
    pi = torch.softmax(theta, -1)
    return pi, (pi * (1 - pi)).clamp(min=0.1)


def cov_denoise(theta, pi, v, x, alpha, sigma):
    """docs/methods.md#redge-variants: softmax(theta + (a x - a s pi - a^2 / 2) / (v s^2))."""
    return torch.softmax(theta + (alpha * x - alpha * sigma * pi - alpha**2 / 2)
                         / (v * sigma**2), -1)


def cov_forward(theta, xi, n_steps, t1):
    """The plain "cov" DDIM loop from the seed pi + sqrt(v) xi; returns (x^(1), soft)."""
    al, si = grid(n_steps, t1)
    pi, v = cov_parts(theta)
    x = pi + v.sqrt() * xi
    for i in range(n_steps - 1, 1, -1):
        x0 = cov_denoise(theta, pi, v, x, al[i], si[i])
        x = al[i - 1] * x0 + si[i - 1] * (x - al[i] * x0) / si[i]
    return x, cov_denoise(theta, pi, v, x, al[1], si[1])


def cov_invert(theta, x1, n_steps, t1, iters=60):
    """Exact inversion of the "cov" loop by Newton's method, level by level (as
    :func:`ddim_invert`, with the per-class coefficient alpha / (v sigma^2))."""
    al, si = grid(n_steps, t1)
    pi, v = cov_parts(theta)
    eye = torch.eye(x1.shape[-1], dtype=x1.dtype)
    target = x1
    for i in range(2, n_steps):
        b = si[i - 1] / si[i]
        a = al[i - 1] - si[i - 1] * al[i] / si[i]
        c = al[i] / (v * si[i] ** 2)
        x = target / b
        for _ in range(iters):
            p = cov_denoise(theta, pi, v, x, al[i], si[i])
            jac = b * eye + a * jac_softmax(p) * c.unsqueeze(-2)
            x = x - torch.linalg.solve(jac, a * p + b * x - target)
        target = x
    return (target - pi) / v.sqrt()


@pytest.mark.parametrize("n_steps,t1", [(3, 0.5), (5, 0.3), (9, 0.5)])
def test_redge_cov_exact_gradient_is_the_pathwise_gradient_of_the_exact_path(n_steps, t1):
    # as above for variant="cov": x_t1 = alpha h + sigma (pi + sqrt(v) eps), the seed found
    # by Newton's method, autograd through the plain cov loop (pi and v depend on theta).
    # catches: any coefficient of the cov inversion or of its backward
    logits, w = _logits_and_upstream(n=48, k=4, seed=23)
    eps = torch.randn(48, 4, dtype=DT, generator=torch.Generator().manual_seed(24))
    torch.manual_seed(25)
    y = sg.redge(logits, n_steps, t1, variant="cov", exact=True, noise=eps)
    g, = torch.autograd.grad((y * w).sum(), logits)
    pi, v = cov_parts(logits.detach())
    x1 = (1 - t1) * y.detach() + t1 * (pi + v.sqrt() * eps)
    xi = cov_invert(logits.detach(), x1, n_steps, t1)
    th = logits.detach().requires_grad_()
    x1_fwd, s = cov_forward(th, xi, n_steps, t1)
    torch.testing.assert_close(x1_fwd.detach(), x1, rtol=0, atol=1e-9)
    g_ref, = torch.autograd.grad((s * w).sum(), th)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


def test_redge_max_matches_the_peer_reindge(monkeypatch):
    # the reference code's "reindge" (redge package) on the same seed and the same hard draw
    # (the peer's Gumbel draw replaced by ours): the same gradient.
    # catches: the 1/2 of the ReinMax-style average (either term), d = h - s with a flipped
    # sign, the path terms dropped or halved
    peer = pytest.importorskip("redge.reindge")
    n_steps, t1 = 4, 0.6
    logits, w = _logits_and_upstream(n=40, k=4, seed=14)
    torch.manual_seed(15)
    eps = torch.randn(40, 4).to(DT)  # the peer draws its seed in float32
    y = sg.redge(logits, n_steps, t1, variant="max", noise=eps)
    g, = torch.autograd.grad((y * w).sum(), logits)
    h = y.detach()
    monkeypatch.setattr(peer, "sample_one_hot_gumbel", lambda probs: h.to(probs.dtype))
    lg = logits.detach().clone().requires_grad_()
    with torch.random.fork_rng():
        torch.manual_seed(15)
        y_peer = peer.reindge(lg.float(), peer.ddim_mod, n_steps, t1)  # draws eps first
    assert torch.equal(y_peer.detach().to(DT), h)
    g_peer, = torch.autograd.grad((y_peer * w.float()).sum(), lg)
    torch.testing.assert_close(g, g_peer.to(DT), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------- exact enumeration
def test_exact_gradient_matches_float64_finite_differences():
    # d E[f] / d theta by central differences of the enumerated expectation (computed here
    # with itertools-free indexing), step 1e-6 in float64: agreement to 1e-7.
    # catches: a missing "- w.sum() * probs" term (gradient of log-softmax), a probability
    # without its normalization
    g = torch.Generator().manual_seed(16)
    theta = torch.randn(2, 3, generator=g, dtype=DT)
    table = torch.randn(3, 3, generator=g, dtype=DT)  # f(x) = table[c_0, c_1]

    def f(x):
        return torch.einsum("si,ij,sj->s", x[:, 0], table, x[:, 1])

    def expectation(th):
        p = torch.softmax(th, -1)
        return (p[0][:, None] * p[1][None, :] * table).sum()

    value, grad = sg.exact(f, theta)
    torch.testing.assert_close(value, expectation(theta), rtol=1e-12, atol=1e-12)
    fd = torch.zeros_like(theta)
    for i in range(2):
        for k in range(3):
            e = torch.zeros_like(theta)
            e[i, k] = 1e-6
            fd[i, k] = (expectation(theta + e) - expectation(theta - e)) / 2e-6
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_exact_ignores_masked_configurations():
    # -inf logits: configurations through a masked class have probability 0, so their
    # values (NaN here) must not reach the value or the gradient.
    # catches: "keep = pc > 0" turned into ">= 0" or dropped
    theta = torch.tensor([[0.2, -math.inf, 0.5], [1.0, 0.0, -math.inf]], dtype=DT)

    def f(x):
        v = x[:, 0, 0] + 2 * x[:, 1, 1]
        return torch.where((x[:, 0, 1] + x[:, 1, 2]) > 0, math.nan, v)

    value, grad = sg.exact(f, theta)
    p = torch.softmax(theta, -1)
    torch.testing.assert_close(value, p[0, 0] + 2 * p[1, 1])
    assert bool(torch.isfinite(grad).all())
    expected = torch.zeros_like(theta)  # d/dtheta of p00 + 2 p11, on the unmasked classes
    expected[0, [0, 2]] = p[0, 0] * (torch.tensor([1.0, 0.0], dtype=DT) - p[0, [0, 2]])
    expected[1, [0, 1]] = 2 * p[1, 1] * (torch.tensor([0.0, 1.0], dtype=DT) - p[1, [0, 1]])
    torch.testing.assert_close(grad, expected)


def test_sampler_applies_the_knobs_over_the_defaults():
    # sg.sampler(name, **knobs) is the registered function with defaults, then the user's
    # knobs, then the method's fixed settings.
    # catches: the knobs ignored or overridden by the defaults, the fixed settings dropped
    logits, w = _logits_and_upstream(n=16, k=4, seed=17)
    draw = sg.sampler("gumbel_soft", tau=2.0)
    torch.manual_seed(18)
    y = draw(logits)
    torch.manual_seed(18)
    torch.testing.assert_close(y, sg.gumbel_softmax(logits, tau=2.0, hard=False))
    torch.manual_seed(18)
    y_hard = sg.sampler("gumbel_hard")(logits)  # default tau 0.5, hard fixed
    torch.manual_seed(18)
    torch.testing.assert_close(y_hard, sg.gumbel_softmax(logits, tau=0.5, hard=True))
    with pytest.raises(ValueError, match="tau"):
        sg.sampler("redge", tau=1.0)
    with pytest.raises(ValueError, match="surrogate"):
        sg.sampler("rloo")


def test_register_checks_the_method_and_adds_it(monkeypatch):
    # catches: each check of register inverted or dropped, the method stored as None
    from samplegrad.categorical import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(TypeError, match="Method"):
        sg.register("not a method")
    with pytest.raises(ValueError, match="kind"):
        sg.register(sg.Method("mine", "magic", sg.straight_through))
    with pytest.raises(TypeError, match="callable"):
        sg.register(sg.Method("mine", "pathwise", None))
    with pytest.raises(ValueError, match="already registered"):
        sg.register(sg.Method("redge", "pathwise", sg.straight_through))
    m = sg.register(sg.Method("mine", "pathwise", sg.straight_through))
    assert registry.get_method("mine") is m and "mine" in sg.methods()
    logits, w = _logits_and_upstream(n=8, k=3, seed=19)
    loss = sg.surrogate(lambda y: (y * w).sum((-1, -2)), logits, method="mine", n_samples=2)
    g, = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(g, matvec(jac_softmax(torch.softmax(logits.detach(), -1)), w))


def test_defaults_and_argument_checks_of_the_relaxed_estimators():
    # documented defaults: Gumbel-softmax tau = 1 and soft (as torch's), ReinMax tau = 1;
    # tau's bounds name the bound. catches: a changed default, the hard-only check of
    # ReinMax dropped, the bound's symbol in the message swapped
    logits, w = _logits_and_upstream(n=16, k=4, seed=20)
    y = sg.gumbel_softmax(logits)
    assert not torch.equal(y.detach(), y.detach().round())  # soft
    g, = torch.autograd.grad((y * w).sum(), logits)
    torch.testing.assert_close(g, matvec(jac_softmax(y.detach()), w), rtol=1e-10, atol=1e-12)
    h = sg.reinmax(logits)
    g, = torch.autograd.grad((h * w).sum(), logits)
    pi = torch.softmax(logits.detach(), -1)
    half = 0.5 * (h.detach() + pi)  # tau = 1: softmax(theta / tau) = pi
    expected = matvec(2 * jac_softmax(half) - 0.5 * jac_softmax(pi), w)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=">= 1"):
        sg.reinmax(logits, tau=0.5)
    with pytest.raises(ValueError, match="> 0"):
        sg.gumbel_softmax(logits, tau=0.0)
    with pytest.raises(ValueError, match="hard"):
        sg.reinmax(logits, hard=False)


@pytest.mark.parametrize("knobs", [{}, {"n_steps": 3, "t1": 0.7, "exact": True, "hard": False},
                                   {"variant": "max"}])
def test_redge_categorical_rsample_is_redge_with_its_knobs(knobs):
    # defaults n_steps 5, t1 0.5, hard, not exact; from probs or logits alike.
    # catches: a changed default, a knob not passed on to redge, probs ignored
    logits, w = _logits_and_upstream(n=6, k=4, seed=21)
    full = {"n_steps": 5, "t1": 0.5, "hard": True, "variant": "paper", "exact": False, **knobs}
    for dist in (sg.ReDGECategorical(logits=logits, **knobs),
                 sg.ReDGECategorical(probs=torch.softmax(logits, -1), **knobs)):
        torch.manual_seed(22)
        y = dist.rsample((3,))
        torch.manual_seed(22)
        ref = sg.redge(dist.logits.expand(3, 6, 4), full["n_steps"], full["t1"], full["hard"],
                       variant=full["variant"], exact=full["exact"])
        torch.testing.assert_close(y, ref)
        g, = torch.autograd.grad((y * w).sum(), logits, retain_graph=True)
        g_ref, = torch.autograd.grad((ref * w).sum(), logits)
        torch.testing.assert_close(g, g_ref)

