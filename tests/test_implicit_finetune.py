"""Implicit Diffusion finetuning: adjoint = unrolled autograd, the queue, the KL sign, input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
    state = finetune_init(m, sched, cfg, shape=D)
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
    state = finetune_init(m, sched, cfg, shape=D)
    state, info = finetune_step(state, m, sched, reward, cfg)
    assert info["finished_slot"] == 0 and state.stage.tolist() == [0]
    us = unrolled_init(m, cfg, D)
    us, info = unrolled_step(us, m, sched, reward, cfg)
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
    with pytest.raises(TypeError, match="model"):
        finetune_init(params, sched, FinetuneConfig(pop_size=2), shape=D)  # a dict, not a module
    with pytest.raises(ValueError, match="shape"):
        finetune_init(m, sched, FinetuneConfig(pop_size=2), shape=0)
    state = finetune_init(m, sched, FinetuneConfig(pop_size=2), shape=D)
    with pytest.raises(ValueError, match="T ="):
        finetune_step(state, m, make_sched(linear_alpha_bars(100), 3, torch.float64),
                      reward, FinetuneConfig(pop_size=2))
    other, _ = tiny(seed=3)
    with pytest.raises(ValueError, match="model"):
        finetune_step(state, other, sched, reward, FinetuneConfig(pop_size=2))
    frozen, _ = tiny()
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        unrolled_init(frozen, FinetuneConfig(), D)


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
    state = unrolled_init(m, cfg, D)
    # reference: the old functional loop on a params dict, same noise stream
    gen = torch.Generator().manual_seed(cfg.seed)
    ref_p = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    adam = ({k: torch.zeros_like(v) for k, v in init.items()},
            {k: torch.zeros_like(v) for k, v in init.items()}, 0)
    for _ in range(3):
        state, info = unrolled_step(state, m, sched, reward, cfg)
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
    state = finetune_init(m, sched, cfg, shape=D,
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
    state = finetune_init(m, sched, cfg, shape=D,
                          optimizer=lambda ps: torch.optim.Adam(ps[-2:], lr=1e-2))
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    for _ in range(2):
        state, _ = finetune_step(state, m, sched, reward, cfg)
    changed = {k for k, v in m.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed == {"out.weight", "out.bias"}
    # the KL reference copies the trainable parameters only (the frozen ones are shared)
    assert set(state.ref_params) == set(before) - {"inp.weight", "inp.bias"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_queue_and_baseline_stay_on_the_model_device():
    m, _ = tiny(torch.float32)
    m = m.cuda()
    sched = make_sched(linear_alpha_bars(100), 3)  # the schedule may stay on the CPU
    cfg = FinetuneConfig(pop_size=2, kl_weight=0.1)
    state = finetune_init(m, sched, cfg, shape=D)
    assert state.paths.is_cuda and state.generator.device.type == "cuda"
    state, info = finetune_step(state, m, sched, reward, cfg)
    assert all(v.is_cuda for v in state.ref_params.values())
    us = unrolled_init(m, cfg, D)
    us, info = unrolled_step(us, m, sched, reward, cfg)
    assert torch.isfinite(torch.tensor(info["reward"]))


# ---------------------------------------------------------------- any model, any event shape
class ConvEps(torch.nn.Module):
    """A user's conv noise model on (N, 1, H, W) images: eps = model(x, t)."""

    def __init__(self, ch: int = 4):
        super().__init__()
        self.inp = torch.nn.Conv2d(2, ch, 3, padding=1)
        self.out = torch.nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x, t):
        tmap = (t.to(x.dtype) / 100.0)[:, None, None, None].expand_as(x)
        return self.out(torch.tanh(self.inp(torch.cat([x, tmap], 1))))


def image_reward(x):  # (N, 1, H, W) -> (N,)
    return torch.sin(x).mean((1, 2, 3)) + x[..., 0, :2, :].mean((1, 2))


@pytest.mark.parametrize("kl_weight", [0.0, 0.4])
def test_adjoint_equals_unrolled_autograd_on_images(kl_weight):
    torch.manual_seed(0)
    m = ConvEps().double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in m.named_parameters()}
    ref = perturbed(params, 0.05)
    sched = make_sched(linear_alpha_bars(100), 4, torch.float64)
    noise = draw_noise(sched, 3, (1, 5, 5), torch.Generator().manual_seed(2), torch.float64)
    assert noise.shape == (5, 3, 1, 5, 5)
    loss, info_u = unrolled_loss(m, params, ref, noise, sched, image_reward, kl_weight)
    g_auto = torch.autograd.grad(loss, list(params.values()))
    with torch.no_grad():
        path = sample_path(lambda x, t: torch.func.functional_call(m, params, (x, t)),
                           noise, sched)
    g_adj, info_a = adjoint_grad(m, params, ref, path, sched, image_reward, kl_weight)
    for (name, ga), gu in zip(g_adj.items(), g_auto):
        torch.testing.assert_close(ga, gu, rtol=1e-6, atol=1e-10, msg=name)
    assert info_a["kl"] == pytest.approx(info_u["kl"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.RMSprop])
def test_queue_and_baseline_train_a_conv_model_on_images(optimizer):
    torch.manual_seed(0)
    m = ConvEps()
    sched = make_sched(linear_alpha_bars(100), 3)
    cfg = FinetuneConfig(pop_size=2, kl_weight=0.1)
    state = finetune_init(m, sched, cfg, (1, 6, 6), optimizer=lambda ps: optimizer(ps, lr=1e-2))
    assert state.paths.shape == (3, 4, 2, 1, 6, 6) and state.shape == (1, 6, 6)
    assert isinstance(state.optimizer, optimizer)
    before = [p.detach().clone() for p in m.parameters()]
    for _ in range(2):
        state, info = finetune_step(state, m, sched, image_reward, cfg)
    us = unrolled_init(m, cfg, (1, 6, 6), optimizer=lambda ps: optimizer(ps, lr=1e-2))
    us, uinfo = unrolled_step(us, m, sched, image_reward, cfg)
    assert us.shape == (1, 6, 6) and uinfo["grad_norm"] > 0
    assert all(not torch.equal(p.detach(), b) for p, b in zip(m.parameters(), before))


def test_params_subset_trains_only_those_and_freezes_the_rest():
    m, _ = tiny(torch.float32)
    sched = make_sched(linear_alpha_bars(100), 3)
    cfg = FinetuneConfig(pop_size=3, lr=1e-2, kl_weight=0.2)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    for init, step in ((finetune_init, finetune_step), (None, unrolled_step)):
        if init is None:
            state = unrolled_init(m, cfg, D, params=[m.out.weight])
        else:
            state = finetune_init(m, sched, cfg, D, params=m.out.parameters())
        state, _ = step(state, m, sched, reward, cfg)
    changed = {k for k, v in m.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed == {"out.weight", "out.bias"}
    assert all(p.requires_grad for p in m.parameters())  # the user's flags are untouched


def test_bad_user_inputs_name_the_argument():
    m, _ = tiny(torch.float32)
    other = torch.nn.Linear(2, 2)
    sched = make_sched(linear_alpha_bars(100), 3)
    cfg = FinetuneConfig(pop_size=2)
    # a finetune input of the wrong width: named, not a raw matmul error
    with pytest.raises(ValueError, match=r"^shape: the model failed on samples of event shape "
                                         r"\(4,\).*mat1 and mat2"):
        finetune_init(m, sched, cfg, shape=4)
    with pytest.raises(ValueError, match=r"^model: a noise model must return eps shaped like "
                                         r"its input x \(2, 1, 6\), got \(2, 2, 6\)"):
        unrolled_init(m, cfg, (1, D))  # broadcasts inside the model: a wrong output shape
    with pytest.raises(TypeError, match=r"^model: calling model\(x, t\) failed"):
        unrolled_init(torch.nn.Linear(D, D), cfg, D)  # takes x only
    with pytest.raises(ValueError, match="^params:"):
        finetune_init(m, sched, cfg, D, params=other.parameters())
    with pytest.raises(TypeError, match="^params:"):
        unrolled_init(m, cfg, D, params=3)
    with pytest.raises(TypeError, match="^sched:"):
        finetune_init(m, linear_alpha_bars(100), cfg, D)
    with pytest.raises(TypeError, match="^cfg:"):
        finetune_init(m, sched, {"pop_size": 2}, D)
    with pytest.raises(ValueError, match="^optimizer: the factory's optimizer has lr=nan"):
        finetune_init(m, sched, cfg, D, optimizer=lambda ps: torch.optim.SGD(ps, lr=float("nan")))
    with pytest.raises(ValueError, match="^n_steps:"):
        make_sched(linear_alpha_bars(100), float("nan"))
    state = finetune_init(m, sched, cfg, D)
    with pytest.raises(ValueError, match=r"^reward_fn: must map x_0 \(2, 6\)"):
        finetune_step(state, m, sched, lambda x: x.sum(), cfg)  # a scalar, not (N,)
    with pytest.raises(ValueError, match="^reward_fn: its output does not depend"):
        finetune_step(state, m, sched, lambda x: reward(x).detach(), cfg)
    with pytest.raises(TypeError, match="^reward_fn:"):
        finetune_step(state, m, sched, None, cfg)
    with pytest.raises(TypeError, match="^state:"):
        finetune_step(unrolled_init(m, cfg, D), m, sched, reward, cfg)


class FirstColumn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return x[:, :1] * self.w


class NaNEps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return x * self.w * float("nan")


def test_non_finite_values_are_caught_where_they_enter_and_only_when_validating():
    import samplegrad as sg

    m, _ = tiny(torch.float32)
    sched = make_sched(linear_alpha_bars(100), 2)
    cfg = FinetuneConfig(pop_size=2, kl_weight=0.0)
    state = finetune_init(m, sched, cfg, D)
    nan_reward = lambda x: x.sum(-1) * float("nan")  # noqa: E731
    with pytest.raises(ValueError, match=r"^reward_fn: returned non-finite values"):
        finetune_step(state, m, sched, nan_reward, cfg)
    with pytest.raises(ValueError, match=r"^model: returned non-finite values"):
        finetune_init(NaNEps(), sched, cfg, D)
    with pytest.raises(ValueError, match=r"^model: a noise model must return eps shaped"):
        finetune_init(FirstColumn(), sched, cfg, D)
    with sg.validation(False):  # no value scans: the NaN goes through (and is reported)
        state2 = finetune_init(m, sched, cfg, D)
        _, info = finetune_step(state2, m, sched, nan_reward, cfg)
    assert info["reward"] != info["reward"]  # NaN


@settings(max_examples=25, deadline=None)
@given(shape=st.one_of(st.integers(-3, 0), st.floats(), st.booleans(), st.just(()),
                       st.lists(st.integers(-2, 0), min_size=1, max_size=3).map(tuple),
                       st.text(max_size=3)))
def test_bad_shapes_are_value_errors_naming_shape(shape):
    m, _ = tiny(torch.float32)
    with pytest.raises(ValueError, match="^shape:"):
        unrolled_init(m, FinetuneConfig(pop_size=2), shape)


def test_a_failed_step_leaves_the_queue_as_it_was():
    import copy

    m1, _ = tiny(torch.float32)
    m2 = copy.deepcopy(m1)
    sched = make_sched(linear_alpha_bars(100), 3)
    cfg = FinetuneConfig(pop_size=2, lr=1e-2, kl_weight=0.1)
    s1, s2 = finetune_init(m1, sched, cfg, D), finetune_init(m2, sched, cfg, D)
    with pytest.raises(ValueError, match="^reward_fn:"):
        finetune_step(s1, m1, sched, lambda x: x, cfg)  # (N, D): refused after advancing
    s1, i1 = finetune_step(s1, m1, sched, reward, cfg)
    s2, i2 = finetune_step(s2, m2, sched, reward, cfg)
    assert i1 == i2 and torch.equal(s1.paths, s2.paths) and torch.equal(s1.stage, s2.stage)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


# ---------------------------------------------------------------- path_memory="recompute"
def test_recompute_gradient_is_the_stored_path_adjoint_under_the_current_theta():
    """Its gradient = ``adjoint_grad`` along the path stored by ``sample_path`` with the
    current theta on the same noise (float64, equal to rounding), = unrolled autograd."""
    m, _ = tiny()
    sched = make_sched(linear_alpha_bars(200), 7, torch.float64)
    cfg = FinetuneConfig(pop_size=5, kl_weight=0.3, seed=11, path_memory="recompute")
    state = finetune_init(m, sched, cfg, D, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert state.paths.shape == (0, 8, 5, D) and state.shape == (D,)
    for _ in range(2):  # the second step runs with a theta the first one moved
        before = {k: v.detach().clone().requires_grad_(True) for k, v in m.named_parameters()}
        rng = state.generator.get_state()
        state, info = finetune_step(state, m, sched, reward, cfg)
        noise = draw_noise(sched, 5, D, torch.Generator().set_state(rng), torch.float64)
        with torch.no_grad():
            path = sample_path(lambda x, t, b=before: torch.func.functional_call(m, b, (x, t)),
                               noise, sched)
        grads, info_s = adjoint_grad(m, before, state.ref_params, path, sched, reward, 0.3)
        loss, _ = unrolled_loss(m, before, state.ref_params, noise, sched, reward, 0.3)
        g_auto = torch.autograd.grad(loss, list(before.values()))
        for (k, p), gu in zip(m.named_parameters(), g_auto):
            torch.testing.assert_close(p.detach(), (before[k] - 0.1 * grads[k]).detach(),
                                       rtol=1e-12, atol=1e-14, msg=k)
            torch.testing.assert_close(grads[k], gu, rtol=1e-6, atol=1e-10, msg=k)
        assert info["reward"] == pytest.approx(info_s["reward"], rel=1e-12)
        assert info["kl"] == pytest.approx(info_s["kl"], rel=1e-12)
        assert "finished_slot" not in info
    assert state.iteration == 2


def test_recompute_follows_the_unrolled_baseline_iterate_for_iterate():
    """Same noise stream, same loss, same Adam: the iterates of the recompute mode and of
    ``unrolled_step`` agree to float64 rounding (the adjoint is exact)."""
    import copy

    m1, _ = tiny()
    m2 = copy.deepcopy(m1)
    sched = make_sched(linear_alpha_bars(200), 5, torch.float64)
    cfg = FinetuneConfig(pop_size=4, lr=1e-2, kl_weight=0.2, seed=5, path_memory="recompute")
    s1, s2 = finetune_init(m1, sched, cfg, D), unrolled_init(m2, cfg, D)
    for _ in range(4):
        s1, i1 = finetune_step(s1, m1, sched, reward, cfg)
        s2, i2 = unrolled_step(s2, m2, sched, reward, cfg)
        assert i1["reward"] == pytest.approx(i2["reward"], rel=1e-9)
        assert i1["kl"] == pytest.approx(i2["kl"], rel=1e-9, abs=1e-12)
    for (k, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-8, atol=1e-10, msg=k)


def test_recompute_state_saves_resumes_and_refuses_the_other_memory_mode():
    import copy

    from samplegrad.implicit.finetune import load_queue_state_dict, queue_state_dict

    m, _ = tiny(torch.float32)
    sched = make_sched(linear_alpha_bars(100), 3)
    rc = FinetuneConfig(pop_size=3, lr=1e-2, kl_weight=0.1, path_memory="recompute")
    full = FinetuneConfig(pop_size=3, lr=1e-2, kl_weight=0.1)
    state = finetune_init(m, sched, rc, D)
    state, _ = finetune_step(state, m, sched, reward, rc)
    blob, m_saved = copy.deepcopy(queue_state_dict(state)), copy.deepcopy(m)  # as on disk
    state, i_straight = finetune_step(state, m, sched, reward, rc)
    m2 = copy.deepcopy(m_saved)
    resumed = load_queue_state_dict(finetune_init(m2, sched, rc, D), blob)
    assert resumed.iteration == 1
    resumed, i_resumed = finetune_step(resumed, m2, sched, reward, rc)
    assert i_resumed == i_straight
    for p1, p2 in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    with pytest.raises(ValueError, match="^blob: the saved queue was built with path_memory"):
        load_queue_state_dict(finetune_init(copy.deepcopy(m_saved), sched, full, D), blob)
    with pytest.raises(ValueError, match="^path_memory: state was built with"):
        finetune_step(state, m, sched, reward, full)
    with pytest.raises(ValueError, match="^sched: state was built for T = 3"):
        finetune_step(state, m, make_sched(linear_alpha_bars(100), 4), reward, rc)
    # a failed step leaves the noise stream as it was
    rng = state.generator.get_state()
    with pytest.raises(ValueError, match="^reward_fn:"):
        finetune_step(state, m, sched, lambda x: x, rc)
    assert torch.equal(state.generator.get_state(), rng)


@settings(max_examples=25, deadline=None)
@given(value=st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans(),
                       st.lists(st.just("full"), max_size=2)))
def test_path_memory_must_be_one_of_the_modes(value):
    from samplegrad.implicit.finetune import PATH_MEMORY

    if value in PATH_MEMORY:
        assert FinetuneConfig(path_memory=value).path_memory == value
    else:
        with pytest.raises(ValueError, match="^path_memory: must be one of"):
            FinetuneConfig(path_memory=value)
