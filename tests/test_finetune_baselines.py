"""DRaFT-K and DDPO: gradients against autograd references and an unbiasedness check."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplegrad.diffusion.ddpm import draw_noise, step_mean
from samplegrad.diffusion.schedules import linear_alpha_bars, sampling_schedule
from samplegrad.implicit.finetune import FinetuneConfig, unrolled_init, unrolled_loss
from samplegrad.implicit.finetune_baselines import (
    DDPOConfig,
    DraftConfig,
    ddpo_init,
    ddpo_step,
    draft_init,
    draft_loss,
    draft_step,
)

DT = torch.float64


class TinyEps(torch.nn.Module):
    """eps(x, t) = tanh(x W + b) + 0.01 t: a small non-linear noise model."""

    def __init__(self, d=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(0.3 * torch.randn(d, d, generator=g, dtype=DT))
        self.b = torch.nn.Parameter(0.1 * torch.randn(d, generator=g, dtype=DT))

    def forward(self, x, t):
        return torch.tanh(x @ self.w + self.b) + 1e-3 * t.to(x.dtype)[:, None]


def reward(x):
    return -(x - 0.5).pow(2).sum(-1)


SCHED = sampling_schedule(linear_alpha_bars(1000), n_steps=4, dtype=DT)
# large per-step noise (sigma 0.5-0.8): the policy gradient's variance grows like 1 / sigma^2
NOISY = sampling_schedule(torch.tensor([0.7, 0.4, 0.1], dtype=DT), n_steps=3, dtype=DT)


def _grads(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()))


def _setup(kl_weight=0.3, k=None, checkpoint=False, seed=0):
    model = TinyEps()
    cfg = DraftConfig(pop_size=5, kl_weight=kl_weight, grad_steps=k, checkpoint=checkpoint)
    state = draft_init(model, cfg, 3)
    params = dict(model.named_parameters())
    ref = {n: p.detach() + 0.05 for n, p in params.items()}  # a reference that differs
    noise = draw_noise(SCHED, 5, 3, torch.Generator().manual_seed(seed), DT)
    return model, cfg, state, params, ref, noise


def test_draft_with_all_steps_is_the_unrolled_gradient():
    model, cfg, _, params, ref, noise = _setup(k=None)
    loss, info = draft_loss(model, params, ref, noise, SCHED, reward, cfg)
    loss_u, info_u = unrolled_loss(model, params, ref, noise, SCHED, reward, cfg.kl_weight)
    for a, b in zip(_grads(loss, model), _grads(loss_u, model)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert info == pytest.approx(info_u, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2])
def test_draft_k_backprops_through_the_last_k_steps_only(k):
    model, cfg, _, params, ref, noise = _setup(k=k)
    loss, _ = draft_loss(model, params, ref, noise, SCHED, reward, cfg)
    # plain reference: the sampler with x detached before the last k steps; the KL terms of
    # the first T - k steps are constants
    f = lambda x, t: torch.func.functional_call(model, params, (x, t))  # noqa: E731
    g = lambda x, t: torch.func.functional_call(model, ref, (x, t))  # noqa: E731
    x, kl = noise[-1], 0.0
    for j in reversed(range(SCHED.n_steps)):
        if j == k - 1:
            x = x.detach()
        mu, mu_ref = step_mean(f, x, j, SCHED), step_mean(g, x, j, SCHED)
        kj = (mu - mu_ref).pow(2).sum(-1) / (2 * SCHED.sigma[j] ** 2)
        kl = kl + (kj if j < k else kj.detach())
        x = (mu if j < k else mu.detach()) + SCHED.sigma[j] * noise[j]
    ref_loss = -(reward(x) - cfg.kl_weight * kl).mean()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    got = _grads(loss, model)
    for a, b in zip(got, _grads(ref_loss, model)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    full, _ = draft_loss(model, params, ref, noise, SCHED, reward,
                         DraftConfig(pop_size=5, kl_weight=0.3, grad_steps=None))
    assert not torch.allclose(_grads(full, model)[0], got[0])  # truncated


def test_checkpointed_draft_equals_plain_draft():
    model, cfg, _, params, ref, noise = _setup(k=3)
    loss, _ = draft_loss(model, params, ref, noise, SCHED, reward, cfg)
    loss_c, _ = draft_loss(model, params, ref, noise, SCHED, reward,
                           DraftConfig(pop_size=5, kl_weight=0.3, grad_steps=3,
                                       checkpoint=True))
    for a, b in zip(_grads(loss, model), _grads(loss_c, model)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_draft_step_improves_the_reward():
    torch.manual_seed(0)
    model = TinyEps()
    cfg = DraftConfig(pop_size=64, lr=0.05, kl_weight=0.0, grad_steps=2)
    state = draft_init(model, cfg, 3)
    first = [draft_step(state, model, SCHED, reward, cfg)[1]["reward"] for _ in range(3)]
    for _ in range(40):
        state, info = draft_step(state, model, SCHED, reward, cfg)
    last = [draft_step(state, model, SCHED, reward, cfg)[1]["reward"] for _ in range(3)]
    assert sum(last) / 3 > sum(first) / 3 + 0.2


class BiasEps(torch.nn.Module):
    """eps = b (a learned constant): E[x_0] is affine in b, so the exact gradient is easy."""

    def __init__(self, d=2):
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor([0.2, -0.1], dtype=DT)[:d])

    def forward(self, x, t):
        return self.b.expand_as(x)


def test_ddpo_first_step_is_an_unbiased_policy_gradient():
    # with leave-one-out advantages (normalize_advantages=False) and ratio 1 on-policy, one
    # SGD step of lr 1 moves b by minus an unbiased estimate of grad(-E[R]); R is linear
    c = torch.tensor([1.0, -2.0], dtype=DT)
    sched = NOISY
    model = BiasEps()
    x2 = torch.zeros(1, 2, dtype=DT)  # E[x_0] from the mean path (x_T ~ N(0, I), linear)
    x = x2
    for j in reversed(range(sched.n_steps)):
        x = step_mean(model, x, j, sched)
    (true,) = torch.autograd.grad(-(x @ c).sum(), model.b)  # grad of the loss -E[R]
    b0 = model.b.detach().clone()
    cfg = DDPOConfig(pop_size=16, kl_weight=0.0, normalize_advantages=False, clip=10.0)
    state = ddpo_init(model, cfg, 2, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    est = []
    for _ in range(400):
        with torch.no_grad():
            model.b.copy_(b0)
        state, _ = ddpo_step(state, model, sched, lambda x: x @ c, cfg)
        est.append(b0 - model.b.detach())
    est = torch.stack(est)
    se = est.std(0) / math.sqrt(est.shape[0])
    assert ((est.mean(0) - true).abs() <= 5 * se).all(), (est.mean(0), true, se)
    assert (se < 0.25 * true.abs()).all()  # the check has power


def test_ddpo_improves_a_black_box_reward():
    torch.manual_seed(1)
    model = TinyEps()
    cfg = DDPOConfig(pop_size=64, lr=0.02, kl_weight=0.0, clip=0.2, inner_epochs=2)
    state = ddpo_init(model, cfg, 3)

    def black_box(x):  # thresholded: no useful gradient
        return (x.sum(-1) > 0).to(x.dtype)

    before = sum(ddpo_step(state, model, NOISY, black_box, cfg)[1]["reward"] for _ in range(3))
    for _ in range(40):
        state, info = ddpo_step(state, model, NOISY, black_box, cfg)
    after = sum(ddpo_step(state, model, NOISY, black_box, cfg)[1]["reward"] for _ in range(3))
    assert after / 3 > before / 3 + 0.15 and 0 <= info["clipped"] <= 1


BAD = {"grad_steps": st.one_of(st.integers(-3, 0), st.floats(), st.text(max_size=2)),
       "checkpoint": st.one_of(st.none(), st.integers(), st.text(max_size=2)),
       "clip": st.one_of(st.floats(max_value=0), st.just(float("nan")), st.none()),
       "inner_epochs": st.one_of(st.integers(-3, 0), st.floats(), st.none()),
       "normalize_advantages": st.one_of(st.none(), st.integers(), st.text(max_size=2))}


@settings(max_examples=40, deadline=None)
@given(data=st.data(), field=st.sampled_from(sorted(BAD)))
def test_bad_config_values_name_the_field(data, field):
    cls = DraftConfig if field in ("grad_steps", "checkpoint") else DDPOConfig
    value = data.draw(BAD[field])
    with pytest.raises(ValueError, match=f"^{field}"):
        cls(**{field: value})


def test_wrong_config_and_state_types_are_named():
    model = TinyEps()
    with pytest.raises(TypeError, match="^cfg:"):
        draft_init(model, FinetuneConfig(), 3)
    with pytest.raises(TypeError, match="^cfg:"):
        ddpo_init(model, DraftConfig(), 3)
    with pytest.raises(TypeError, match="^state:"):
        draft_step(None, model, SCHED, reward, DraftConfig())
    with pytest.raises(ValueError, match="^cfg: DDPO"):
        state = ddpo_init(model, DDPOConfig(pop_size=1), 3)
        ddpo_step(state, model, SCHED, reward, DDPOConfig(pop_size=1))
    assert isinstance(unrolled_init(model, FinetuneConfig(), 3).shape, tuple)
