"""Guidance: the lam -> inf limit is the unguided sampler; a small lam moves the samples."""

import math

import pytest
import torch
from test_discrete_model import TINY

from samplegrad.categorical import get_method
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
        if get_method(name).n_classes == 2:
            continue  # ARM/DisARM: binary variables only (tests/test_estimators_unbiased.py)
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


# ----------------------------------------------------------------------------- any model
def test_objective_is_checked_where_it_enters():
    p = torch.randn(2, 6, 3)
    x = torch.tensor([[3, 1, 3, 3, 0, 3]] * 2)
    for method in ("redge", "rloo"):
        cfg = GuidanceConfig(method, n_samples=2, n_opt_steps=1)
        with pytest.raises(ValueError, match=r"^objective: must map sequences .* got \(\)"):
            guided_logits(p, x, lambda y: y.sum(), cfg)  # a scalar
        with pytest.raises(ValueError, match=r"^objective: returned non-finite"):
            guided_logits(p, x, lambda y: count_zeros(y) * float("nan"), cfg)
    cfg = GuidanceConfig("redge", n_samples=2, n_opt_steps=1)
    with pytest.raises(TypeError, match="^objective:"):
        guided_logits(p, x, None, cfg)
    with pytest.raises(TypeError, match="^cfg:"):
        make_guide(count_zeros, {"method": "redge"})
    with pytest.raises(ValueError, match="^p_logits:"):
        guided_logits(p[0], x, count_zeros, cfg)
    with pytest.raises(ValueError, match="^p_logits: contains NaN"):
        guided_logits(p * float("nan"), x, count_zeros, cfg)
    with pytest.raises(ValueError, match="^x: has token ids outside"):
        guided_logits(p, x + 5, count_zeros, cfg)


@pytest.mark.parametrize("method", bench_methods())
def test_mask_id_inside_the_vocabulary_and_masked_classes_stay_impossible(method):
    if get_method(method).n_classes == 2:
        pytest.skip("binary-only estimator; the vocabulary has 4 tokens")
    # vocabulary of 4 with the model's [MASK] = 1; class 3 is forbidden (-inf) everywhere
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 5, 4, generator=g)
    p[..., 3] = -math.inf
    x = torch.tensor([[1, 0, 1, 2, 1], [1, 1, 1, 1, 1]])
    cfg = GuidanceConfig(method, n_samples=2, n_opt_steps=2, kl_mode="gradient")
    q = guided_logits(p, x, count_zeros, cfg, mask_id=1)
    assert q.shape == p.shape
    assert torch.isneginf(q[..., 3]).all() and torch.isneginf(q[..., 1]).all()
    assert torch.isfinite(q[..., [0, 2]]).all()
    assert torch.equal(q[0, 1, [0, 2]], p[0, 1, [0, 2]])  # unmasked rows untouched
    probs = torch.softmax(q, -1)
    assert torch.isfinite(probs).all() and (probs[..., [1, 3]] == 0).all()


def test_guided_sampling_of_a_plain_function_model_with_its_own_mask_id():
    table = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))

    def model(x):  # (B, L) -> (B, L, 4); the mask id 2 lies inside the vocabulary
        return table[x]

    n = 200
    cfg = GuidanceConfig("redge", n_samples=4, n_opt_steps=5, lr=0.5, kl_weight=0.1)
    free = mdm_sample(model, 3, batch_size=n, seq_len=6, mask_id=2,
                      generator=torch.Generator().manual_seed(1))
    guided, kl = mdm_sample(model, 3, batch_size=n, seq_len=6, mask_id=2,
                            guide=make_guide(count_zeros, cfg, mask_id=2), return_kl=True,
                            generator=torch.Generator().manual_seed(2))
    assert not (guided == 2).any() and (kl > 0).all()
    z0, z1 = (free == 0).float().mean().item(), (guided == 0).float().mean().item()
    assert z1 < z0 - 0.1, (z0, z1)
