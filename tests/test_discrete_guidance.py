"""Guidance: the lam -> inf limit is the unguided sampler; a small lam moves the samples."""

import pytest
import torch
from test_discrete_model import TINY

from samplegrad.discrete import Denoiser, GuidanceConfig, guided_logits, make_guide
from samplegrad.discrete import sample as mdm_sample
from samplegrad_bench.estimators import bench_methods


def count_zeros(y):  # (S, B, L, V) -> (S, B): loss = number of token-0 positions
    return y[..., 0].sum(-1)


def _model():
    torch.manual_seed(0)
    return Denoiser(TINY)


def test_huge_lambda_gives_model_logits():
    p = torch.randn(4, 6, 3)
    x = torch.tensor([[3, 1, 3, 3, 0, 3]] * 4)
    for mode in ("prox", "gradient"):
        q = guided_logits(p, x, count_zeros, GuidanceConfig("redge", kl_weight=1e9, kl_mode=mode))
        diff = (torch.log_softmax(q, -1) - torch.log_softmax(p, -1)).abs().max().item()
        # prox: exact up to rounding; gradient: Adam's normalized steps stay within ~lr
        assert diff < (1e-4 if mode == "prox" else 1.0), (mode, diff)
    q = guided_logits(p, x, count_zeros, GuidanceConfig("rloo", kl_weight=float("inf")))
    assert torch.equal(q, p)


def test_huge_lambda_reproduces_unguided_token_frequencies():
    model = _model()
    n = 3000
    free = mdm_sample(model, 4, batch_size=n, generator=torch.Generator().manual_seed(1))
    guide = make_guide(count_zeros, GuidanceConfig("redge", n_opt_steps=3, kl_weight=1e9))
    guided = mdm_sample(model, 4, batch_size=n, guide=guide,
                        generator=torch.Generator().manual_seed(2))
    f0 = torch.nn.functional.one_hot(free, 3).float().mean(0)  # (L, V) frequencies
    f1 = torch.nn.functional.one_hot(guided, 3).float().mean(0)
    tol = 5 * (2 * f0 * (1 - f0) / n).sqrt() + 1e-3
    assert ((f0 - f1).abs() <= tol).all(), (f0 - f1).abs().max()


@pytest.mark.parametrize("method,n", [("redge", 200), ("rloo", 30)])
def test_small_lambda_guides(method, n):
    model = _model()
    free = mdm_sample(model, 3, batch_size=n, generator=torch.Generator().manual_seed(1))
    cfg = GuidanceConfig(method, n_samples=4, n_opt_steps=5, lr=0.5, kl_weight=0.1)
    guided, kl = mdm_sample(model, 3, batch_size=n, guide=make_guide(count_zeros, cfg),
                            generator=torch.Generator().manual_seed(2), return_kl=True)
    z0, z1 = (free == 0).float().mean().item(), (guided == 0).float().mean().item()
    assert z1 < z0 - 0.1, (z0, z1)
    assert (kl > 0).all()


def test_every_estimator_runs_one_guided_step():
    p = torch.randn(2, 6, 3)
    x = torch.tensor([[3, 1, 3, 3, 0, 3], [3, 3, 3, 3, 3, 3]])
    for name in bench_methods():
        q = guided_logits(p, x, count_zeros, GuidanceConfig(name, n_samples=2, n_opt_steps=2))
        assert q.shape == p.shape and torch.isfinite(q).all(), name
        assert torch.equal(q[0, 1], p[0, 1])  # unmasked rows untouched
        assert (q[x == 3] != p[x == 3]).any(), name


def test_bad_config_and_shapes():
    with pytest.raises(ValueError, match="method"):
        GuidanceConfig("exact")
    with pytest.raises(ValueError, match="kl_mode"):
        GuidanceConfig(kl_mode="x")
    with pytest.raises(ValueError, match="kl_weight"):
        GuidanceConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="x must be shaped"):
        guided_logits(torch.randn(2, 6, 3), torch.zeros(2, 5, dtype=torch.long), count_zeros,
                      GuidanceConfig())
