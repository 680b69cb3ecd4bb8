"""ReDGE: simplex, straight-through limit, exact hard samples, gradients, peer equivalence."""

import importlib
import math

import pytest
import scipy.stats
import torch

import samplegrad as sg
from samplegrad_bench._common import saved_tensor_bytes

R = importlib.import_module("samplegrad.categorical.redge")
LOGITS6 = torch.tensor([1.2, -0.3, 0.5, -1.5, 0.0, 0.8])


def chi2_pvalue(onehots: torch.Tensor, probs: torch.Tensor) -> float:
    counts = onehots.reshape(-1, probs.numel()).sum(0).double()
    n = counts.sum()
    expected = n * probs.double()
    stat = ((counts - expected) ** 2 / expected).sum().item()
    return float(scipy.stats.chi2.sf(stat, probs.numel() - 1))


def naive_redge_soft(theta, eps, n_steps, t1):
    """Independent autograd implementation of the reference DDIM sampler (class axis last)."""
    alphas = [1.0] + torch.linspace(1 - t1, 1e-4, n_steps - 1, dtype=torch.float64).tolist()
    sig = [1 - a for a in alphas]
    x = eps
    for i in range(n_steps - 1, 1, -1):
        p = torch.softmax(theta + alphas[i] / sig[i] ** 2 * x, -1)
        x = alphas[i - 1] * p + sig[i - 1] * (x - alphas[i] * p) / sig[i]
    return torch.softmax(theta + alphas[1] / sig[1] ** 2 * x, -1)


@pytest.mark.parametrize("variant", ["paper", "cov"])
@pytest.mark.parametrize("exact", [False, True])
def test_soft_samples_lie_on_simplex(variant, exact):
    logits = torch.randn(50, 4, 7) * 2
    s = sg.redge(logits, n_steps=5, t1=0.3, hard=False, variant=variant, exact=exact)
    assert (s >= 0).all()
    torch.testing.assert_close(s.sum(-1), torch.ones(50, 4))


@pytest.mark.parametrize("variant", ["paper", "cov"])
def test_t1_one_is_straight_through(variant):
    logits = torch.randn(20, 5, requires_grad=True)
    s = sg.redge(logits, n_steps=4, t1=1.0, hard=False, variant=variant)
    torch.testing.assert_close(s, torch.softmax(logits, -1))
    w = torch.randn(20, 5)
    g1, = torch.autograd.grad((sg.redge(logits, 4, 1.0, variant=variant) * w).sum(), logits)
    g2, = torch.autograd.grad((sg.straight_through(logits) * w).sum(), logits)
    torch.testing.assert_close(g1, g2)


def test_hard_sample_is_one_hot_with_soft_gradient():
    logits = torch.randn(30, 6, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(30, 6, dtype=torch.float64)
    y = sg.redge(logits, 5, 0.4, noise=eps)
    assert set(y.detach().sum(-1).tolist()) == {1.0}
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    w = torch.randn(30, 6, dtype=torch.float64)
    g_ours, = torch.autograd.grad((y * w).sum(), logits)
    g_ref, = torch.autograd.grad((naive_redge_soft(logits, eps, 5, 0.4) * w).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("n_steps", [2, 3, 6])
def test_analytic_backward_matches_autograd(n_steps):
    logits = (torch.randn(8, 3, 5, dtype=torch.float64) * 2).requires_grad_()
    eps = torch.randn(8, 3, 5, dtype=torch.float64)
    w = torch.randn(8, 3, 5, dtype=torch.float64)
    for t1 in (0.05, 0.5, 0.9):
        s = sg.redge(logits, n_steps, t1, hard=False, noise=eps)
        g, = torch.autograd.grad((s * w).sum(), logits)
        s_ref = naive_redge_soft(logits, eps, n_steps, t1)
        g_ref, = torch.autograd.grad((s_ref * w).sum(), logits)
        torch.testing.assert_close(s, s_ref)
        torch.testing.assert_close(g, g_ref)


def test_max_variant_gradient_formula():
    """max = pathwise gradient with the last denoiser's direct term halved, plus <g,d>d/2."""
    logits = torch.randn(40, 4, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(40, 4, dtype=torch.float64)
    w = torch.randn(40, 4, dtype=torch.float64)
    torch.manual_seed(5)
    y = sg.redge(logits, 4, 0.6, variant="max", noise=eps)
    g_max, = torch.autograd.grad((y * w).sum(), logits)
    torch.manual_seed(5)
    y_paper = sg.redge(logits, 4, 0.6, noise=eps)
    assert torch.equal(y.detach(), y_paper.detach())  # same draw
    g_paper, = torch.autograd.grad((y_paper * w).sum(), logits)
    s = naive_redge_soft(logits.detach(), eps, 4, 0.6)
    u = s * (w - (w * s).sum(-1, keepdim=True))
    d = y.detach() - s
    expected = g_paper - 0.5 * u + 0.5 * (w * d).sum(-1, keepdim=True) * d
    torch.testing.assert_close(g_max, expected)


@pytest.mark.parametrize("n_steps", [2, 3, 5, 9])
@pytest.mark.parametrize("t1", [0.1, 0.3, 0.7, 1.0])
def test_exact_hard_samples_are_categorical(n_steps, t1):
    n = 40_000
    probs = torch.softmax(LOGITS6, -1)
    y = sg.redge(LOGITS6.expand(n, 6), n_steps, t1, exact=True)
    # family of ~30 tests: per-test level 1e-4 keeps the false-alarm rate below 1%
    assert chi2_pvalue(y, probs) > 1e-4


@pytest.mark.parametrize("variant", ["cov", "max"])
def test_exact_hard_samples_other_variants(variant):
    n = 40_000
    y = sg.redge(LOGITS6.expand(n, 6), 3, 0.3, variant=variant, exact=True)
    assert chi2_pvalue(y, torch.softmax(LOGITS6, -1)) > 1e-4


def test_reference_sampler_is_biased_and_the_test_detects_it():
    """The same chi-square test rejects the default sampler at (n_steps=2, t1=0.3)."""
    n = 40_000
    y = sg.redge(LOGITS6.expand(n, 6), 2, 0.3)
    assert chi2_pvalue(y, torch.softmax(LOGITS6, -1)) < 1e-10
    tv = 0.5 * (y.mean(0) - torch.softmax(LOGITS6, -1)).abs().sum()
    assert tv > 0.1  # the reference measured 0.33 at K=6 with other logits


def test_exact_gradient_is_pathwise_and_finite():
    logits = torch.randn(100, 5, requires_grad=True)
    y = sg.redge(logits, 5, 0.3, exact=True)
    (y * torch.arange(5.0)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(100), atol=1e-5, rtol=0)


def naive_cov_soft(theta, seed, n_steps, t1):
    """Independent autograd implementation of the moment-matched ("cov") sampler."""
    alphas = [1.0] + torch.linspace(1 - t1, 1e-4, n_steps - 1, dtype=torch.float64).tolist()
    sig = [1 - a for a in alphas]
    probs = torch.softmax(theta, -1)
    var = (probs * (1 - probs)).clamp(min=0.1)

    def denoise(x, a, s):
        return torch.softmax(theta + (a * x - a * s * probs - a * a / 2) / (var * s * s), -1)

    x = probs + var.sqrt() * seed
    for i in range(n_steps - 1, 1, -1):
        p = denoise(x, alphas[i], sig[i])
        x = alphas[i - 1] * p + sig[i - 1] * (x - alphas[i] * p) / sig[i]
    return x, denoise(x, alphas[1], sig[1])


def naive_paper_x1(theta, seed, n_steps, t1):
    alphas = [1.0] + torch.linspace(1 - t1, 1e-4, n_steps - 1, dtype=torch.float64).tolist()
    sig = [1 - a for a in alphas]
    x = seed
    for i in range(n_steps - 1, 1, -1):
        p = torch.softmax(theta + alphas[i] / sig[i] ** 2 * x, -1)
        x = alphas[i - 1] * p + sig[i - 1] * (x - alphas[i] * p) / sig[i]
    return x


@pytest.mark.parametrize("variant", ["paper", "cov", "max"])
@pytest.mark.parametrize("n_steps,t1", [(3, 0.5), (5, 0.5), (5, 0.3), (9, 0.1), (5, 0.05),
                                        (17, 0.3), (4, 1.0)])
def test_exact_gradient_is_the_pathwise_gradient_of_the_exact_path(variant, n_steps, t1):
    """exact=True: the recovered seed's forward DDIM run passes through x_t1 (float64:
    residual < 1e-9 for t1 < 1), and the gradient equals autograd through that forward run (written
    independently here), with the seed held fixed."""
    logits = (torch.randn(40, 6, dtype=torch.float64) * 2)
    logits[::5, 1] = -math.inf  # masked classes
    logits.requires_grad_()
    eps = torch.randn(40, 6, dtype=torch.float64)
    w = torch.randn(40, 6, dtype=torch.float64)
    torch.manual_seed(7)
    y = sg.redge(logits, n_steps, t1, exact=True, variant=variant, noise=eps)
    g_ours, = torch.autograd.grad((y * w).sum(), logits)
    h = y.detach()
    alphas, sig = R.schedule(n_steps, t1)
    if variant == "cov":
        probs = torch.softmax(logits.detach(), -1)
        var = (probs * (1 - probs)).clamp(min=0.1)
        x1 = alphas[1] * h + sig[1] * (probs + var.sqrt() * eps)
    else:
        x1 = alphas[1] * h + sig[1] * eps
    seed = R.recover_seed(logits, x1, n_steps, t1, variant=variant)
    if variant == "cov":
        x1_fwd, soft = naive_cov_soft(logits, seed, n_steps, t1)
    else:
        x1_fwd = naive_paper_x1(logits, seed, n_steps, t1)
        soft = torch.softmax(logits + alphas[1] / sig[1] ** 2 * x1_fwd, -1)
    # t1 = 1: plain DDIM inversion (the grid is not monotone there; the path has weight 0)
    assert (x1_fwd.detach() - x1).abs().max() < (1e-7 if t1 > 0.9999 else 1e-9)
    if variant == "max":  # last step's direct term halved, plus <g, d> d / 2
        s = soft.detach()
        u = s * (w - (w * s).sum(-1, keepdim=True))
        d = h - s
        g_ref, = torch.autograd.grad((soft * w).sum(), logits)
        g_ref = g_ref - 0.5 * u + 0.5 * (w * d).sum(-1, keepdim=True) * d
    else:
        g_ref, = torch.autograd.grad((soft * w).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-7, atol=1e-9)
    assert g_ours[::5, 1].abs().max() == 0


@pytest.mark.parametrize("t1", [0.05, 0.3, 0.5, 0.9])
def test_exact_inversion_residual_float32(t1):
    """The stated float32 tolerance: a forward DDIM run from the seed that exact=True recovers
    misses x_t1 by at most 1e-5 (the approximate DDIM inversion missed it by up to 0.4)."""
    k, n = 10, 2000
    logits = torch.randn(n, k) * 3
    probs = torch.softmax(logits, -1)
    h = torch.nn.functional.one_hot(torch.multinomial(probs, 1)[:, 0], k).float()
    for n_steps in (3, 5, 9):
        alphas, sig = R.schedule(n_steps, t1)
        x1 = alphas[1] * h + sig[1] * torch.randn(n, k)
        assert R.inversion_residual(logits, x1, n_steps, t1).max() < 1e-5


def test_saved_memory_does_not_grow_with_n_steps():
    logits = torch.randn(64, 8, 10, requires_grad=True)
    sizes = []
    for n_steps in (3, 9, 33):
        with saved_tensor_bytes() as m:
            y = sg.redge(logits, n_steps, 0.5)
        sizes.append(m["bytes"])
        y.sum().backward()
    assert sizes[0] == sizes[1] == sizes[2]


def test_peer_package_same_soft_sample():
    peer = pytest.importorskip("redge")
    for variant, fn in (("paper", peer.redge), ("cov", peer.redge_cov)):
        for n_steps, t1 in ((2, 0.3), (5, 0.5), (9, 0.1)):
            logits = torch.randn(16, 7, requires_grad=True)
            torch.manual_seed(11)
            s_peer = fn(logits, n_steps, t1, hard=False)
            torch.manual_seed(11)
            eps = torch.randn(16, 7)
            s_ours = sg.redge(logits, n_steps, t1, hard=False, variant=variant, noise=eps)
            torch.testing.assert_close(s_ours, s_peer, atol=1e-5, rtol=1e-5)
            w = torch.randn(16, 7)
            g1, = torch.autograd.grad((s_ours * w).sum(), logits)
            g2, = torch.autograd.grad((s_peer * w).sum(), logits)
            torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_distribution_rsample():
    logits = torch.randn(3, 4, requires_grad=True)
    d = sg.ReDGECategorical(logits=logits, n_steps=4, t1=0.4)
    y = d.rsample((5,))
    assert y.shape == (5, 3, 4) and set(y.detach().sum(-1).flatten().tolist()) == {1.0}
    (y * torch.arange(4.0)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(d.log_prob(y.detach()),
                               (torch.log_softmax(logits, -1) * y.detach()).sum(-1))
    with pytest.raises(ValueError, match="t1"):
        sg.ReDGECategorical(logits=logits, t1=0.0)


def test_distribution_shapes_and_expand_keep_the_redge_settings():
    logits = torch.randn(4, 3, requires_grad=True)
    d = sg.ReDGECategorical(logits=logits, n_steps=3, t1=0.7, variant="paper", exact=True,
                            validate_args=True)
    assert d.batch_shape == (4,) and d.event_shape == (3,)
    e = d.expand((2, 4))
    assert type(e) is sg.ReDGECategorical
    assert e.batch_shape == (2, 4) and e.event_shape == (3,)
    assert (e.n_steps, e.t1, e.variant, e.exact, e.hard) == (3, 0.7, "paper", True, True)
    assert e._validate_args is True
    y = e.rsample((5,))
    assert y.shape == (5, 2, 4, 3)
    assert torch.equal(y.detach().sum(-1), torch.ones(5, 2, 4))
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}  # valid one-hot samples
    assert e.log_prob(y.detach()).shape == (5, 2, 4)  # passes support validation
    y.sum().backward()
    assert logits.grad is not None and logits.grad.shape == (4, 3)
    assert e.sample((7,)).shape == (7, 2, 4, 3)
    # torch.distributions helpers that go through expand
    assert sg.ReDGECategorical(logits=torch.zeros(3), validate_args=False).expand(
        (6,))._validate_args is False
    batched = torch.distributions.Independent(d, 1)
    assert batched.rsample((2,)).shape == (2, 4, 3)
    with pytest.raises(ValueError):  # validate_args reaches OneHotCategorical's checks
        sg.ReDGECategorical(probs=torch.tensor([-0.5, 1.5]), validate_args=True)
    with pytest.raises(ValueError):  # and survives expand: a non-one-hot value is rejected
        e.log_prob(torch.tensor([0.5, 0.5, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_distribution_low_precision_logits(dtype):
    logits = torch.randn(2, 5).to(dtype).requires_grad_(True)
    d = sg.ReDGECategorical(logits=logits, n_steps=2, t1=0.5)
    y = d.rsample((3,))
    assert y.dtype == dtype and y.shape == (3, 2, 5)
    assert torch.equal(y.detach().float().sum(-1), torch.ones(3, 2))
    y.float().sum().backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("variant", ["paper", "max"])
def test_backward_reuses_the_forward_path_only_when_it_is_still_there(variant):
    # the forward leaves its softmaxes in a scratch buffer that a following backward reuses;
    # any other call in between (here: a second sample of another shape and one of the same
    # shape) must make the backward recompute them, with the same gradients in every order
    shapes = [(7, 4, 5), (7, 4, 5), (3, 6)]
    ws = [torch.randn(s) for s in shapes]
    alone = []
    for j, (shape, w) in enumerate(zip(shapes, ws)):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(j))
        x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)),
                        requires_grad=True)
        (sg.redge(x, 6, 0.4, variant=variant, noise=noise, generator=torch.Generator(
            ).manual_seed(9)) * w).sum().backward()  # the generator draws the hard sample
        alone.append((x, noise, x.grad.clone()))
    outs = []
    for (x, noise, _), w in zip(alone, ws):  # all forwards first
        x.grad = None
        outs.append((sg.redge(x, 6, 0.4, variant=variant, noise=noise, generator=torch.Generator(
            ).manual_seed(9)) * w).sum())
    for i in (0, 2, 1):  # backwards in another order
        outs[i].backward(retain_graph=True)
        torch.testing.assert_close(alone[i][0].grad, alone[i][2], rtol=0, atol=0)
        alone[i][0].grad = None
        outs[i].backward()  # twice on the same graph
        torch.testing.assert_close(alone[i][0].grad, alone[i][2], rtol=0, atol=0)
