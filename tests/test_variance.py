"""Score-function estimators: their exact variances, where unbiasedness alone cannot tell a bug.

RLOO without its baseline, or with ``1/n`` in place of ``1/(n - 1)``, is still unbiased (each
draw's baseline stays independent of the draw), so only its variance shows the bug. On a
fixed problem (2 variables, 3 classes, an objective with a large offset) the exact variance
of each estimator is computed here by enumerating all ``9**3`` triples of draws, written
independently of the library; the Monte Carlo variance of the library's estimators over
20,000 independent replicates (one batched call: each replicate is one leading batch
element with per-element values) must match it within 5 standard errors, where the
standard error comes from the replicates themselves.

Exact trace variances here: no baseline 3.59, REINFORCE with baseline E[f] 0.100, RLOO
0.130; RLOO with 1/n would be 0.386 and RLOO without baseline 3.59 (20,000 replicates: a
standard error of about 0.7% of each value).
"""

import itertools
import math

import pytest
import torch

import samplegrad as sg

DT = torch.float64
L, K, N_DRAWS, REPS = 2, 3, 3, 20_000
OFFSET = 4.0  # a large mean makes the baseline matter


def _problem():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(L, K, generator=g, dtype=DT)
    table = torch.randn(K, K, generator=g, dtype=DT)

    def f(x):  # (..., L, K) one-hots -> (...): offset + table[c_0, c_1]
        return OFFSET + torch.einsum("...i,ij,...j->...", x[..., 0, :], table, x[..., 1, :])

    return theta, f


def _enumerated(theta, f):
    """Configurations' probabilities, values and scores ``d log p / d theta`` (flattened)."""
    cfg = torch.tensor(list(itertools.product(range(K), repeat=L)))
    onehot = torch.nn.functional.one_hot(cfg, K).to(DT)  # (C, L, K)
    pi = torch.softmax(theta, -1)
    prob = (onehot * pi).sum(-1).prod(-1)
    score = (onehot - pi).reshape(len(cfg), -1)  # gradient of log-softmax at each draw
    return prob, f(onehot), score


def exact_moments(theta, f, estimator):
    """Exact mean and trace variance of an ``N_DRAWS``-draw estimator, by enumerating every
    tuple of draws. ``estimator(values (T, n), scores (T, n, LK)) -> (T, LK)``."""
    prob, val, score = _enumerated(theta, f)
    idx = torch.tensor(list(itertools.product(range(len(prob)), repeat=N_DRAWS)))
    p = prob[idx].prod(-1)
    est = estimator(val[idx], score[idx])
    mean = (p[:, None] * est).sum(0)
    var = (p * ((est - mean) ** 2).sum(-1)).sum()
    return mean, var


def no_baseline(v, s):
    return (v[..., None] * s).mean(1)


def constant_baseline(b):
    return lambda v, s: ((v - b)[..., None] * s).mean(1)


def leave_one_out(denominator):
    def est(v, s):
        adv = v - (v.sum(1, keepdim=True) - v) / denominator
        return (adv[..., None] * s).mean(1)
    return est


def _monte_carlo(loss_fn):
    """``REPS`` independent replicates of an estimator in one call: the logits are repeated
    along a leading batch axis and ``f`` returns one value per replicate."""
    theta, f = _problem()
    lg = theta.expand(REPS, L, K).clone().requires_grad_()
    loss = loss_fn(f, lg)
    loss.backward()
    return loss.detach(), lg.grad.reshape(REPS, -1)


def _check(grads, mean, var, name):
    # mean: per coordinate |z| < 4.5 (6 coordinates); trace variance: |z| < 5, with the
    # standard error of a mean of REPS squared deviations
    se_mean = grads.std(0) / math.sqrt(REPS)
    z = ((grads.mean(0) - mean) / se_mean).abs()
    assert (z < 4.5).all(), (name, z)
    d = ((grads - grads.mean(0)) ** 2).sum(-1)
    var_mc, se_var = d.mean() * REPS / (REPS - 1), d.std() / math.sqrt(REPS)
    assert abs(var_mc - var) < 5 * se_var, (name, float(var_mc), float(var), float(se_var))
    return var_mc, se_var


def test_exact_variances_are_ordered():
    # the enumeration itself: RLOO is close to the oracle baseline E[f], far below no
    # baseline; a 1/n leave-one-out mean is 3x worse than 1/(n - 1)
    theta, f = _problem()
    _, exact_grad = sg.exact(f, theta)
    prob, val, _ = _enumerated(theta, f)
    ef = float((prob * val).sum())
    means, var = {}, {}
    for name, est in (("none", no_baseline), ("oracle", constant_baseline(ef)),
                      ("rloo", leave_one_out(N_DRAWS - 1)), ("rloo_1/n", leave_one_out(N_DRAWS))):
        means[name], var[name] = exact_moments(theta, f, est)
        torch.testing.assert_close(means[name], exact_grad.reshape(-1))  # all unbiased
    assert var["oracle"] < var["rloo"] < 1.5 * var["oracle"]
    assert 2.5 * var["rloo"] < var["rloo_1/n"] and 20 * var["rloo"] < var["none"]


@pytest.mark.parametrize("name", ["rloo", "reinforce", "reinforce_oracle_baseline"])
def test_score_function_estimators_have_their_exact_mean_and_variance(name):
    # catches (rloo): the baseline dropped (variance 3.59 vs 0.130), 1/n instead of
    # 1/(n - 1) (0.386), the baseline added instead of subtracted, a biased baseline that
    # includes the draw itself (mean off); (reinforce): the baseline ignored or added,
    # the score's sign (mean off), a log-probability summed over the wrong axis
    theta, f = _problem()
    _, exact_grad = sg.exact(f, theta)
    prob, val, _ = _enumerated(theta, f)
    ef = float((prob * val).sum())
    if name == "rloo":
        est, fn = leave_one_out(N_DRAWS - 1), lambda f, lg: sg.rloo(f, lg, N_DRAWS)
    elif name == "reinforce":
        est, fn = no_baseline, lambda f, lg: sg.reinforce(f, lg, N_DRAWS)
    else:
        est = constant_baseline(ef)
        fn = lambda f, lg: sg.reinforce(f, lg, N_DRAWS, baseline=torch.tensor(ef))  # noqa: E731
    mean, var = exact_moments(theta, f, est)
    torch.testing.assert_close(mean, exact_grad.reshape(-1))
    value, grads = _monte_carlo(fn)
    _check(grads, mean, var, name)
    # the loss value is the Monte Carlo estimate of E[f] summed over the replicates
    sd_f = float((prob * (val - ef) ** 2).sum().sqrt())
    value_se = sd_f * math.sqrt(REPS / N_DRAWS)
    assert abs(float(value) - REPS * ef) < 5 * value_se


def test_rloo_variance_is_below_reinforce_without_baseline_by_a_margin():
    # the ordering itself on the library's draws, each side widened by 5 standard errors
    # (about 0.7% of the smaller value): catches RLOO without its baseline
    _, g_rloo = _monte_carlo(lambda f, lg: sg.rloo(f, lg, N_DRAWS))
    _, g_none = _monte_carlo(lambda f, lg: sg.reinforce(f, lg, N_DRAWS))
    out = []
    for g in (g_rloo, g_none):
        d = ((g - g.mean(0)) ** 2).sum(-1)
        out.append((float(d.mean()), float(d.std()) / math.sqrt(REPS)))
    (v_rloo, se_rloo), (v_none, se_none) = out
    assert v_rloo + 5 * se_rloo < 0.1 * (v_none - 5 * se_none)
