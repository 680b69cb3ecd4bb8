"""Implicit Diffusion finetuning: adjoint = unrolled autograd, the queue, the KL sign, input."""

import pytest
import torch

from samplegrad.diffusion import EpsMLP, ddpm_step, draw_noise, linear_alpha_bars, sample_path
from samplegrad.diffusion import sampling_schedule as make_sched
from samplegrad.implicit.finetune import (
    FinetuneConfig,
    adjoint_grad,
    finetune_init,
    finetune_step,
    path_kl,
    unrolled_init,
    unrolled_loss,
    unrolled_step,
)

D = 6


def tiny(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = EpsMLP(dim=D, hidden=16, n_blocks=2, temb_dim=8).to(dtype)
    torch.nn.init.normal_(m.out.weight, std=0.05)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in m.named_parameters()}
    return m, params


def perturbed(params, scale, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: (v.detach() + scale * torch.randn(v.shape, generator=g, dtype=v.dtype))
            for k, v in params.items()}


def reward(x):  # smooth, nonlinear, (N, D) -> (N,)
    return torch.sin(x).sum(-1) + 0.1 * x.pow(2).sum(-1)


@pytest.mark.parametrize("kl_weight", [0.0, 0.5])
def test_adjoint_gradient_equals_autograd_through_unrolled_sampler(kl_weight):
    m, params = tiny()
    ref = perturbed(params, 0.02)
    sched = make_sched(linear_alpha_bars(200), 9, torch.float64)
    noise = draw_noise(sched, 5, D, torch.Generator().manual_seed(2), torch.float64)
    loss, info_u = unrolled_loss(m, params, ref, noise, sched, reward, kl_weight)
    g_auto = torch.autograd.grad(loss, list(params.values()))
    with torch.no_grad():
        path = sample_path(lambda x, t: torch.func.functional_call(m, params, (x, t)),
                           noise, sched)
    g_adj, info_a = adjoint_grad(m, params, ref, path, sched, reward, kl_weight)
    for (name, ga), gu in zip(g_adj.items(), g_auto):
        torch.testing.assert_close(ga, gu, rtol=1e-5, atol=1e-8, msg=name)
    assert info_a["reward"] == pytest.approx(info_u["reward"], rel=1e-10)
    assert info_a["kl"] == pytest.approx(info_u["kl"], rel=1e-10)
    if kl_weight:
        assert info_a["kl"] > 0
        kl = path_kl(m, params, ref, path, sched)
        assert kl.mean().item() == pytest.approx(info_a["kl"], rel=1e-10)


def test_queue_advances_each_population_once_and_emits_one_per_iteration():
    m, params = tiny(torch.float32)
    t_total = 5
    sched = make_sched(linear_alpha_bars(100), t_total)
    cfg = FinetuneConfig(pop_size=3, lr=1e-3, kl_weight=0.1)
    state = finetune_init(m, sched, cfg, dim=D)
    assert sorted(state.stage.tolist()) == list(range(t_total))  # staggered after warm-up
    for it in range(2 * t_total + 1):
        before = state.stage.clone()
        state, info = finetune_step(state, m, sched, reward, cfg)
        p = info["finished_slot"]
        assert before[p] == t_total - 1  # the one that was one step from the end finished
        expected = before + 1
        expected[p] = 0  # restarted from fresh noise
        assert state.stage.tolist() == expected.tolist()
        assert state.iteration == it + 1
        assert torch.isfinite(state.paths[p, 0]).all()
        assert set(info) >= {"reward", "kl", "grad_norm", "finished_slot"}
    # the same population slot finishes every T iterations
    assert sorted(state.stage.tolist()) == list(range(t_total))


def test_queue_with_one_step_and_unrolled_step_run():
    m, params = tiny(torch.float32)
    sched = make_sched(linear_alpha_bars(100), 1)
    cfg = FinetuneConfig(pop_size=4, kl_weight=0.0)
    state = finetune_init(m, sched, cfg, dim=D)
    state, info = finetune_step(state, m, sched, reward, cfg)
    assert info["finished_slot"] == 0 and state.stage.tolist() == [0]
    us = unrolled_init(m, cfg)
    us, info = unrolled_step(us, m, sched, reward, cfg, dim=D)
    assert us.iteration == 1 and torch.isfinite(torch.tensor(info["reward"]))


def test_kl_gradient_pulls_parameters_toward_the_reference():
    m, params = tiny()
    ref = perturbed(params, 0.05)
    sched = make_sched(linear_alpha_bars(200), 6, torch.float64)
    noise = draw_noise(sched, 64, D, torch.Generator().manual_seed(3), torch.float64)
    with torch.no_grad():
        path = sample_path(lambda x, t: torch.func.functional_call(m, params, (x, t)),
                           noise, sched)
    zero = lambda x: x.sum(-1) * 0.0  # noqa: E731 - no reward: only the KL term
    grads, info = adjoint_grad(m, params, ref, path, sched, zero, kl_weight=1.0)
    assert info["kl"] > 0
    # descent direction -grad points from theta toward theta_ref
    inner = sum((grads[k] * (params[k] - ref[k])).sum() for k in params).detach()
    assert inner.item() > 0
    # and a small descent step lowers the KL along the same path
    step = {k: (params[k] - 1e-3 * grads[k] / max(1e-12, float(inner) ** 0.5)).detach()
            for k in params}
    before = path_kl(m, params, ref, path, sched).mean()
    after = path_kl(m, step, ref, path, sched).mean()
    assert after < before


def test_bad_input_raises_clear_errors():
    m, params = tiny()
    sched = make_sched(linear_alpha_bars(100), 4, torch.float64)
    path = torch.zeros(5, 3, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_steps"):
        make_sched(linear_alpha_bars(100), 0)  # T < 1
    with pytest.raises(ValueError, match="path"):
        adjoint_grad(m, params, None, path[:4], sched, reward)
    with pytest.raises(ValueError, match="reward_fn"):
        adjoint_grad(m, params, None, path, sched, lambda x: x)  # (N, D), not (N,)
    with pytest.raises(ValueError, match="non-finite"):
        adjoint_grad(m, params, None, path, sched, lambda x: x.sum(-1) / 0.0)
    with pytest.raises(ValueError, match="kl_weight"):
        adjoint_grad(m, params, None, path, sched, reward, kl_weight=-1.0)
    with pytest.raises(ValueError, match="ref_params"):
        adjoint_grad(m, params, None, path, sched, reward, kl_weight=1.0)
    with pytest.raises(ValueError, match="noise"):
        unrolled_loss(m, params, None, path[:3], sched, reward)
    with pytest.raises(ValueError, match="pop_size"):
        FinetuneConfig(pop_size=0)
    with pytest.raises(ValueError, match="lr"):
        FinetuneConfig(lr=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        FinetuneConfig(optimizer="NoSuchOptimizer")
    with pytest.raises(ValueError, match="kl_weight"):
        FinetuneConfig(kl_weight=float("nan"))
    with pytest.raises(ValueError, match="model"):
        finetune_init(params, sched, FinetuneConfig(pop_size=2), dim=D)  # a dict, not a module
    with pytest.raises(ValueError, match="dim"):
        finetune_init(m, sched, FinetuneConfig(pop_size=2), dim=0)
    state = finetune_init(m, sched, FinetuneConfig(pop_size=2), dim=D)
    with pytest.raises(ValueError, match="T ="):
        finetune_step(state, m, make_sched(linear_alpha_bars(100), 3, torch.float64),
                      reward, FinetuneConfig(pop_size=2))
    other, _ = tiny(seed=3)
    with pytest.raises(ValueError, match="model"):
        finetune_step(state, other, sched, reward, FinetuneConfig(pop_size=2))
    frozen, _ = tiny()
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        unrolled_init(frozen, FinetuneConfig())


def _old_adam(grads, state, params, lr, b1=0.9, b2=0.999, eps=1e-8):
    """The hand-written Adam this module used before torch.optim (kept to pin the math)."""
    m, v, c = state
    c += 1
    m = {k: m[k] * b1 + (1 - b1) * grads[k] for k in params}
    v = {k: v[k] * b2 + (1 - b2) * grads[k] ** 2 for k in params}
    new = {k: (params[k] - lr * (m[k] / (1 - b1**c)) / ((v[k] / (1 - b2**c)).sqrt() + eps))
           .detach().requires_grad_(True) for k in params}
    return new, (m, v, c)


def test_unrolled_step_trains_the_model_in_place_with_the_old_adam_math():
    m, params = tiny()
    sched = make_sched(linear_alpha_bars(200), 4, torch.float64)
    cfg = FinetuneConfig(pop_size=5, lr=1e-2, kl_weight=0.3, seed=7)
    init = {k: v.detach().clone() for k, v in params.items()}
    state = unrolled_init(m, cfg)
    # reference: the old functional loop on a params dict, same noise stream
    gen = torch.Generator().manual_seed(cfg.seed)
    ref_p = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    adam = ({k: torch.zeros_like(v) for k, v in init.items()},
            {k: torch.zeros_like(v) for k, v in init.items()}, 0)
    for _ in range(3):
        state, info = unrolled_step(state, m, sched, reward, cfg, dim=D)
        noise = draw_noise(sched, cfg.pop_size, D, gen, torch.float64)
        loss, info_old = unrolled_loss(m, ref_p, init, noise, sched, reward, cfg.kl_weight)
        g = dict(zip(ref_p, torch.autograd.grad(loss, list(ref_p.values()))))
        ref_p, adam = _old_adam(g, adam, ref_p, cfg.lr)
        assert info["reward"] == pytest.approx(info_old["reward"], rel=1e-9)
        assert info["kl"] == pytest.approx(info_old["kl"], rel=1e-9)
    assert state.iteration == 3
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.detach(), ref_p[k].detach(), rtol=1e-9, atol=1e-12, msg=k)
        torch.testing.assert_close(state.ref_params[k], init[k])  # the reference stays frozen
        assert p.grad is None  # no stale gradients left on the user's model


def test_queue_step_is_one_optimizer_step_on_the_adjoint_gradient():
    m, _ = tiny()
    sched = make_sched(linear_alpha_bars(100), 1, torch.float64)  # T = 1: no warm-up
    cfg = FinetuneConfig(pop_size=4, kl_weight=0.0, seed=3)
    lr = 0.05
    state = finetune_init(m, sched, cfg, dim=D,
                          optimizer=lambda ps: torch.optim.SGD(ps, lr=lr))
    assert isinstance(state.optimizer, torch.optim.SGD)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    x1 = state.paths[0, 1].clone()
    state, info = finetune_step(state, m, sched, reward, cfg)
    # replay: the same sampler step from x1 with the same noise, then the adjoint gradient
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.randn(1, cfg.pop_size, D, generator=gen, dtype=torch.float64)  # init's x_T draw
    z = torch.randn(1, cfg.pop_size, D, generator=gen, dtype=torch.float64)[0]
    path = torch.stack([ddpm_step(lambda x, t: torch.func.functional_call(m, before, (x, t)),
                                  x1, 0, sched, z), x1])
    leaves = {k: v.clone().requires_grad_(True) for k, v in before.items()}
    grads, _ = adjoint_grad(m, leaves, None, path, sched, reward)
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.detach(), before[k] - lr * grads[k], msg=k)


def test_only_the_optimized_parameters_change():
    m, _ = tiny()
    m.inp.requires_grad_(False)  # a frozen layer stays out of the optimizer
    sched = make_sched(linear_alpha_bars(100), 3, torch.float64)
    cfg = FinetuneConfig(pop_size=3, lr=1e-2)
    state = finetune_init(m, sched, cfg, dim=D,
                          optimizer=lambda ps: torch.optim.Adam(ps[-2:], lr=1e-2))
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    for _ in range(2):
        state, _ = finetune_step(state, m, sched, reward, cfg)
    changed = {k for k, v in m.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed == {"out.weight", "out.bias"}
    assert set(state.ref_params) == set(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_queue_and_baseline_stay_on_the_model_device():
    m, _ = tiny(torch.float32)
    m = m.cuda()
    sched = make_sched(linear_alpha_bars(100), 3)  # the schedule may stay on the CPU
    cfg = FinetuneConfig(pop_size=2, kl_weight=0.1)
    state = finetune_init(m, sched, cfg, dim=D)
    assert state.paths.is_cuda and state.generator.device.type == "cuda"
    state, info = finetune_step(state, m, sched, reward, cfg)
    assert all(v.is_cuda for v in state.ref_params.values())
    us = unrolled_init(m, cfg)
    us, info = unrolled_step(us, m, sched, reward, cfg, dim=D)
    assert torch.isfinite(torch.tensor(info["reward"]))
