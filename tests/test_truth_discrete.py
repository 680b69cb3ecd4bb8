"""Masked diffusion: guidance's prox and gradient steps, the sampler's temperature and path KL,
the Gumbel-max draw and the ELBO, each pinned to an independent truth.

The truths are written here from docs/methods.md#guidance: Adam written out (Kingma & Ba's
update with bias correction), the proximal step ``(phi' + eta p) / (1 + eta)`` with
``eta = lr * lambda``, the analytic gradient of ``KL(q || p)``, ``softmax(logits / T)`` for
the sampler, and the ELBO's expectation for a model that ignores its input. Each test names
the source mutations it was checked to catch (see docs/mutation.md).
"""

import math
from types import SimpleNamespace

import pytest
import scipy.stats
import torch
from torch import nn
from torch.distributions import Categorical, kl_divergence

from samplegrad.discrete import (
    GuidanceConfig,
    MDMConfig,
    MDMTrainConfig,
    guided_logits,
    make_guide,
    masked_diffusion_loss,
    train_init,
    train_step,
)
from samplegrad.discrete import sample as mdm_sample
from samplegrad.discrete.sampler import categorical_draw, kl_categorical

B, L, V = 2, 3, 4


def _guidance_problem():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(B, L, V, generator=g)
    w = torch.randn(L, V, generator=g)
    x = torch.tensor([[V, 1, V], [0, V, V]])  # mask id V: positions to optimize
    return p, w, x


def linear_loss(w):
    # one loss per sample and sequence: <w, y>, linear, so straight-through's gradient
    # J(pi)^T w does not depend on the draw
    return lambda y: (y * w).sum((-1, -2))


def jac_softmax_t(theta, v):
    """``J(softmax(theta))^T v`` written out: ``pi * (v - <v, pi>)``."""
    pi = torch.softmax(theta, -1)
    return pi * (v - (v * pi).sum(-1, keepdim=True))


def adam_reference(theta0, grad_fn, lr, n_steps, after_step=lambda th: th):
    """Adam (beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected), then ``after_step``."""
    th, m, v = theta0.clone(), torch.zeros_like(theta0), torch.zeros_like(theta0)
    for k in range(1, n_steps + 1):
        gk = grad_fn(th)
        m = 0.9 * m + 0.1 * gk
        v = 0.999 * v + 0.001 * gk**2
        th = th - lr * (m / (1 - 0.9**k)) / ((v / (1 - 0.999**k)).sqrt() + 1e-8)
        th = after_step(th)
    return th


@pytest.mark.parametrize("lr,lam,warm", [(0.3, 2.0, False), (0.1, 0.5, True)])
def test_prox_step_is_the_kl_proximal_map_with_eta_lr_times_lambda(lr, lam, warm):
    # phi <- (phi' + eta p) / (1 + eta), eta = lr * lambda, after each Adam step on E[loss];
    # a warm start (offset) moves the start, never the prox's center p.
    # catches: eta without its learning rate (eta = lambda), the prox pulling toward the
    # start instead of p, the division by 1 + eta dropped, the estimator gradient's sign,
    # unmasked rows not reset to p
    p, w, x = _guidance_problem()
    masked = (x == V).unsqueeze(-1)
    offset = 0.7 * torch.randn(B, L, V, generator=torch.Generator().manual_seed(9)) if warm \
        else None
    cfg = GuidanceConfig("straight_through", n_samples=2, n_opt_steps=3, lr=lr, kl_weight=lam)
    q = guided_logits(p, x, linear_loss(w), cfg, offset)
    eta = lr * lam
    expected = adam_reference(
        p if offset is None else p + offset,
        lambda th: torch.where(masked, jac_softmax_t(th, w.expand_as(th)), 0.0), lr, 3,
        after_step=lambda th: (th + eta * p) / (1 + eta))
    expected = torch.where(masked, expected, p)
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-5)
    assert (q - p)[masked.expand_as(p)].abs().max() > 10 * 1e-5  # the update is visible


def test_gradient_mode_adds_the_analytic_kl_gradient():
    # kl_mode="gradient": Adam on grad E[loss] + lambda * grad KL(q || p), with
    # grad_phi KL(softmax(phi) || softmax(p)) = J(q)^T (log q - log p).
    # catches: the KL term's sign, lambda dropped, KL(p || q) instead of KL(q || p)
    p, w, x = _guidance_problem()
    masked = (x == V).unsqueeze(-1)
    lr, lam = 0.2, 1.5
    cfg = GuidanceConfig("straight_through", n_samples=2, n_opt_steps=4, lr=lr, kl_weight=lam,
                         kl_mode="gradient")
    q = guided_logits(p, x, linear_loss(w), cfg)

    def grad(th):
        log_ratio = torch.log_softmax(th, -1) - torch.log_softmax(p, -1)
        g = jac_softmax_t(th, w.expand_as(th)) + lam * jac_softmax_t(th, log_ratio)
        return torch.where(masked, g, 0.0)

    expected = torch.where(masked, adam_reference(p, grad, lr, 4), p)
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("warm", [True, False])
def test_guide_warm_start_carries_q_minus_p_to_the_next_step(warm):
    # make_guide remembers q - p of the previous step and starts the next optimization at
    # p_next + (q - p); without warm_start, or for another batch size, it starts at p_next.
    # catches: the offset not stored, stored as q + p, not passed on, the batch check inverted
    p, w, x = _guidance_problem()
    cfg = GuidanceConfig("straight_through", n_samples=2, n_opt_steps=2, lr=0.2, kl_weight=0.5,
                         warm_start=warm)
    guide = make_guide(linear_loss(w), cfg)
    q1 = guide(p, x, 1.0, 0.5)
    torch.testing.assert_close(q1, guided_logits(p, x, linear_loss(w), cfg))
    p2 = p + 0.3
    q2 = guide(p2, x, 0.5, 0.0)
    expected = guided_logits(p2, x, linear_loss(w), cfg, (q1 - p) if warm else None)
    torch.testing.assert_close(q2, expected)
    q3 = guide(p2[:1], x[:1], 0.5, 0.0)  # another batch: start afresh
    torch.testing.assert_close(q3, guided_logits(p2[:1], x[:1], linear_loss(w), cfg))


def test_kl_categorical_is_the_categorical_kl():
    # catches: the arguments' roles swapped, log-probabilities without normalization,
    # 0 log 0 not replaced by 0
    g = torch.Generator().manual_seed(1)
    q, p = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 2
    torch.testing.assert_close(kl_categorical(q, p),
                               kl_divergence(Categorical(logits=q), Categorical(logits=p)))
    # a class masked (-inf) in q contributes 0 log 0 = 0, not NaN
    q[:, 2] = -math.inf
    torch.testing.assert_close(kl_categorical(q, p),
                               kl_divergence(Categorical(logits=q), Categorical(logits=p)))


# ----------------------------------------------------------------------- the sampler
class FixedLogits(nn.Module):
    """A "model" whose logits ignore the input: tokens (B', L) -> logits (B', L, V)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.config = SimpleNamespace(vocab_size=logits.shape[-1], seq_len=logits.shape[0],
                                      mask_id=logits.shape[-1])

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1)


LOGITS = torch.tensor([[1.0, -0.5, 0.3, 0.0], [-1.0, 0.8, 0.2, -0.3]])


def chi2_pvalue(tokens, probs):
    counts = torch.nn.functional.one_hot(tokens, probs.shape[-1]).sum(0).double()
    expected = tokens.shape[0] * probs.double()
    return float(scipy.stats.chi2.sf(((counts - expected) ** 2 / expected).sum().item(),
                                     probs.numel() - probs.shape[0]))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampler_draws_from_the_tempered_softmax(temperature):
    # tokens ~ softmax(logits / T); a multiplied temperature (softmax(logits * T)) is far
    # off at T = 2 and 0.5. 6000 draws, chi-square p-value > 1e-4.
    # catches: the temperature multiplied instead of divided, or ignored
    n = 6000
    x = mdm_sample(FixedLogits(LOGITS), 1, batch_size=n, temperature=temperature,
                   generator=torch.Generator().manual_seed(2))
    assert chi2_pvalue(x, torch.softmax(LOGITS / temperature, -1)) > 1e-4


def test_categorical_draw_is_gumbel_max():
    # catches: the Gumbel noise's sign (argmax of logits - G is not Cat(pi))
    x = categorical_draw(LOGITS.expand(6000, -1, -1), torch.Generator().manual_seed(3))
    assert chi2_pvalue(x, torch.softmax(LOGITS, -1)) > 1e-4


def test_reported_path_kl_is_the_expected_kl_of_the_revealed_positions():
    # a guide returning fixed logits q: every position is revealed exactly once, so the
    # expected path KL is sum_i KL(q_i || p_i / T) whatever the number of steps. One step:
    # exactly; three steps: the mean over 3000 runs within 5 standard errors.
    # catches: the reveal probability (t - s) / t misweighted, KL(p || q), the temperature
    # not applied to the p of the KL
    temperature = 1.5
    q = torch.tensor([[0.0, 0.5, -0.5, 1.0], [0.3, 0.3, -1.0, 0.0]])
    kl = kl_divergence(Categorical(logits=q), Categorical(logits=LOGITS / temperature)).sum()

    def guide(p_logits, x, t, s):
        return q.expand_as(p_logits)

    model = FixedLogits(LOGITS)
    _, path_kl = mdm_sample(model, 1, batch_size=4, guide=guide, temperature=temperature,
                            return_kl=True, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(path_kl, kl.expand(4))
    _, path_kl = mdm_sample(model, 3, batch_size=3000, guide=guide, temperature=temperature,
                            return_kl=True, generator=torch.Generator().manual_seed(5))
    se = path_kl.std() / math.sqrt(3000)
    assert abs(path_kl.mean() - kl) < 5 * se + 1e-6, (path_kl.mean(), kl, se)
    assert path_kl.std() > 0  # the reveal times are random


# ----------------------------------------------------------------------- the ELBO
@pytest.mark.parametrize("weighting", ["elbo", "unweighted"])
def test_masked_diffusion_loss_expectation_for_an_input_blind_model(weighting):
    # each position is masked w.p. t and weighted 1/t, so for a model that ignores its input
    # E[loss] = sum_i -log p_i(x0_i) / L ("elbo"); "unweighted" averages the masked
    # positions' cross-entropy. 20,000 sequences; the "elbo" tolerance is 5 times a bound
    # on the standard deviation (independent t; stratified t only lowers it).
    # catches: the 1/t weight dropped or multiplied, the mask probability 1 - t, the
    # per-token normalization 1/L
    n = 20_000
    model = FixedLogits(LOGITS)
    x0 = torch.tensor([0, 3]).expand(n, -1).clone()
    nll = -torch.log_softmax(LOGITS, -1)[torch.arange(2), torch.tensor([0, 3])].double()
    loss = float(masked_diffusion_loss(model, x0, weighting=weighting,
                                       generator=torch.Generator().manual_seed(6)))
    if weighting == "elbo":
        mean = float(nll.sum()) / 2
        e_inv_t = math.log(1 / 1e-3) / (1 - 1e-3)  # E[1/t], t ~ U(1e-3, 1)
        second = (e_inv_t * (nll**2).sum() + 2 * nll[0] * nll[1]) / 4
        sd = math.sqrt(float(second) - mean**2)
        assert abs(loss - mean) < 5 * sd / math.sqrt(n), (loss, mean)
    else:
        mean = float(nll.mean())
        assert abs(loss - mean) < 0.02 * mean, (loss, mean)


def test_training_learning_rate_is_linear_warmup_then_cosine_to_ten_percent():
    # MDMTrainConfig's documented schedule: lr (s + 1) / W for s < W, then
    # lr (0.1 + 0.45 (1 + cos(pi (s - W) / (S - W)))), held at 0.1 lr after S steps.
    # catches: the warm-up off by one, the cosine's phase or amplitude, the floor 0.1
    cfg = MDMTrainConfig(steps=7, batch_size=4, lr=0.02, warmup=3)
    tiny = MDMConfig(vocab_size=3, seq_len=4, width=8, depth=1, heads=2, mlp_ratio=1)
    state = train_init(tiny, cfg, seed=0)
    data = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 1]])
    for s in range(9):
        state, info = train_step(state, data, cfg)
        if s < 3:
            expected = 0.02 * (s + 1) / 3
        else:
            frac = min(1.0, (s - 3) / 4)
            expected = 0.02 * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        assert info["lr"] == pytest.approx(expected, rel=1e-6), s
        assert state.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)

