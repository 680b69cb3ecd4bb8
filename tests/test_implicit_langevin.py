"""Implicit Diffusion, Langevin part: gradient estimators against closed forms, the KL sign,
ULA's stationary law, the single loop and its baselines, the hexagon task, bad input."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplegrad.implicit.langevin import (
    LangevinConfig,
    fit,
    init,
    kl_estimate,
    kl_gradient,
    langevin_sample,
    langevin_step,
    objective_gradient,
    reward_gradient,
    step,
)
from samplegrad.implicit.langevin_baselines import (
    BaselineConfig,
    nested_step,
    unrolled_step,
    unrolled_trajectory,
)
from samplegrad_bench.cli import main
from samplegrad_bench.tasks.mixtures import (
    HEXAGON_THETA_INIT,
    component_rewards,
    hexagon_centers,
    hexagon_reward,
    mixture_kl,
    mixture_log_density,
    mixture_potential,
    mixture_reward,
)

DT = torch.float64


def gauss_potential(x, theta):
    """V(x, theta) = ||x - theta||^2 / 2: pi_theta = N(theta, I), normalizer free of theta."""
    return 0.5 * (x - theta).pow(2).sum(-1)


def exact_samples(theta, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return theta + torch.randn(n, theta.numel(), generator=g, dtype=DT)


# ----------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("reward, exact_grad", [
    (lambda x: x[:, 0], lambda th: torch.tensor([1.0, 0.0], dtype=DT)),          # E[x_1] = th_1
    (lambda x: x[:, 0] ** 2, lambda th: torch.tensor([2 * th[0], 0.0], dtype=DT)),  # th_1^2 + 1
    (lambda x: x[:, 0] * x[:, 1], lambda th: th.flip(0)),                         # th_1 th_2
])
def test_covariance_reward_gradient_matches_closed_form(reward, exact_grad):
    theta = torch.tensor([0.7, -0.4], dtype=DT)
    n = 200_000
    x = exact_samples(theta, n)
    r = reward(x)
    g = reward_gradient(gauss_potential, x, theta, r)
    # the estimate is the mean of (R - mean R)(x - theta): its standard error from the samples
    se = ((r - r.mean()).unsqueeze(-1) * (x - theta)).std(0) / math.sqrt(n)
    assert g.shape == (2,)
    assert torch.all((g - exact_grad(theta)).abs() <= 5 * se + 1e-12), (g, exact_grad(theta), se)


def test_kl_gradient_sign_and_value():
    theta, theta_ref = torch.tensor([1.0], dtype=DT), torch.tensor([0.0], dtype=DT)
    n = 100_000
    x, x_ref = exact_samples(theta, n, 1), exact_samples(theta_ref, n, 2)
    g = kl_gradient(gauss_potential, x, theta, x_ref)
    # KL(N(0,1) || N(theta,1)) = theta^2 / 2: gradient theta = 1; standard error ~ sqrt(2/n)
    assert abs(float(g) - 1.0) < 5 * math.sqrt(2 / n)
    # a descent step moves theta toward the reference and lowers the (estimated) KL
    new = theta - 0.5 * g
    assert 0 < float(new) < float(theta)
    assert kl_estimate(gauss_potential, x_ref, new, theta_ref) < kl_estimate(
        gauss_potential, x_ref, theta, theta_ref)
    assert abs(kl_estimate(gauss_potential, x_ref, theta, theta_ref) - 0.5) < 0.02


def test_objective_gradient_combines_reward_and_kl():
    theta, theta_ref = torch.tensor([0.3, 0.1], dtype=DT), torch.zeros(2, dtype=DT)
    x, x_ref = exact_samples(theta, 5000, 3), exact_samples(theta_ref, 4000, 4)
    r = torch.sin(x[:, 0]) + x[:, 1]
    lam = 0.7
    g = objective_gradient(gauss_potential, x, theta, r, lam, x_ref)
    expected = -reward_gradient(gauss_potential, x, theta, r) + lam * kl_gradient(
        gauss_potential, x, theta, x_ref)
    torch.testing.assert_close(g, expected)


def test_single_loop_kl_only_pulls_theta_to_reference():
    cfg = LangevinConfig(step_size=0.1, lr=0.2, kl_weight=1.0, n_particles=500, n_ref=500,
                         ref_burn_in=50)
    theta_ref = torch.tensor([-1.0, 2.0])
    state = init(gauss_potential, torch.tensor([2.0, -1.0]), cfg, shape=2,
                 theta_ref=theta_ref, seed=0)
    d0 = float((state.theta.detach() - theta_ref).norm())
    zero = lambda x: torch.zeros(x.shape[0])  # noqa: E731  (no reward: KL only)
    for _ in range(150):
        state, _ = step(state, gauss_potential, zero, cfg)
    assert float((state.theta.detach() - theta_ref).norm()) < 0.3 * d0


# ----------------------------------------------------------------------------- sampler
def test_ula_stationary_gaussian_has_known_bias():
    gamma, n = 0.2, 50_000
    theta = torch.tensor([0.5], dtype=DT)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g, dtype=DT)
    x = langevin_sample(gauss_potential, x, theta, gamma, 100, generator=g)
    var_ula = 1 / (1 - gamma / 2)  # ULA on V = x^2/2: x' = (1-g) x + sqrt(2g) z
    var, mean = float(x.var()), float(x.mean())
    assert abs(mean - 0.5) < 5 * math.sqrt(var_ula / n)
    assert abs(var - var_ula) < 5 * var_ula * math.sqrt(2 / n)
    assert abs(var - 1.0) > 0.05  # the O(gamma) bias is really there


# ----------------------------------------------------------------------------- loops
def _gauss_reward(x):  # E under N(theta, 1) = exp(-(theta - 2)^2 / 4) / sqrt(2)
    return torch.exp(-0.5 * (x[:, 0] - 2.0) ** 2)


def test_fit_single_loop_improves_reward():
    cfg = LangevinConfig(step_size=0.2, lr=1.0, n_particles=500)
    state, hist = fit(gauss_potential, _gauss_reward, torch.tensor([-1.0]), cfg, 200, shape=1,
                      seed=0, log_every=10)
    assert len(hist["step"]) == 20 and hist["step"][-1] == 200 == state.step
    assert all(t1 >= t0 for t0, t1 in zip(hist["time"], hist["time"][1:]))
    assert math.isnan(hist["kl"][-1])  # no reference given
    assert 1.0 < float(state.theta.detach()) < 3.0  # moved from -1 toward the optimum theta = 2
    assert sum(hist["reward"][-5:]) / 5 > hist["reward"][0] + 0.2


def test_fit_hexagon_improves_exact_reward():
    theta0 = torch.tensor(HEXAGON_THETA_INIT)
    state, hist = fit(mixture_potential, hexagon_reward, theta0, LangevinConfig(n_particles=400),
                      300, shape=2, seed=0, log_every=100)
    assert float(mixture_reward(state.theta.detach())) > float(mixture_reward(theta0)) + 0.02


def test_unrolled_pathwise_gradient_is_exact_for_linear_reward():
    # x_T = theta + (1-g)^T (x_0 - theta) + noise: d mean(x_T) / d theta = 1 - (1-g)^T exactly
    gamma, T = 0.2, 7
    theta = torch.tensor([0.3], dtype=DT, requires_grad=True)
    x0 = torch.randn(100, 1, dtype=DT)
    xT = unrolled_trajectory(gauss_potential, x0, theta, gamma, T)
    (g,) = torch.autograd.grad(xT.mean(), theta)
    assert abs(float(g) - (1 - (1 - gamma) ** T)) < 1e-10


def test_baselines_step_in_the_reward_direction():
    # R(x) = x, V = (x - theta)^2 / 2, SGD lr 0.1 from theta = 0, 30 inner ULA steps (gamma 0.2)
    n, lr, gamma, T = 4000, 0.1, 0.2, 30
    reward = lambda x: x[:, 0]  # noqa: E731
    cfg = BaselineConfig(step_size=gamma, lr=lr, n_particles=n, n_inner=T)
    state = init(gauss_potential, torch.tensor([0.0], dtype=DT), cfg,
                 x0=torch.randn(n, 1, dtype=DT), seed=0)
    # unrolled: the pathwise gradient of mean x_T is exactly 1 - (1 - gamma)^T
    new, _ = unrolled_step(state, gauss_potential, reward, cfg)
    assert new.step == 1 and abs(float(new.theta.detach()) - lr * (1 - (1 - gamma) ** T)) < 1e-9
    assert new.x.shape == (n, 1) and not new.x.requires_grad
    # nested: covariance gradient Cov(x, x - theta) = the variance of ULA's law, 1/(1 - gamma/2)
    state = init(gauss_potential, torch.tensor([0.0], dtype=DT), cfg,
                 x0=torch.randn(n, 1, dtype=DT), seed=1)
    new, _ = nested_step(state, gauss_potential, reward, cfg)
    var = 1 / (1 - gamma / 2)
    assert abs(float(new.theta.detach()) - lr * var) < 5 * lr * var * math.sqrt(2 / n)


# ----------------------------------------------------------------------------- the task
def test_hexagon_task_closed_forms():
    c = hexagon_centers(dtype=DT)
    torch.testing.assert_close(c[0], torch.tensor([4.0, 0.0], dtype=DT))
    torch.testing.assert_close(c.norm(dim=-1), torch.full((6,), 4.0, dtype=DT))
    g = torch.Generator().manual_seed(0)
    n = 200_000
    z = torch.randn(n, 2, generator=g, dtype=DT)
    r = component_rewards(c)
    for k in range(6):
        vals = hexagon_reward(z + c[k])
        assert abs(float(vals.mean() - r[k])) < 5 * float(vals.std()) / math.sqrt(n) + 1e-6
    theta = torch.tensor(HEXAGON_THETA_INIT, dtype=DT)
    x = 3 * torch.randn(64, 2, generator=g, dtype=DT)
    torch.testing.assert_close(mixture_potential(x, theta),
                               -mixture_log_density(x, theta, c) - math.log(2 * math.pi))
    assert mixture_kl(theta, theta) == pytest.approx(0.0, abs=1e-12)
    # KL to a mixture with a dominant weight is positive
    assert mixture_kl(theta, torch.tensor([0.0, 4.0, 0, 0, 0, 0], dtype=DT)) > 0.5


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_value_error():
    x, theta = torch.randn(10, 2), torch.zeros(2)
    with pytest.raises(ValueError, match="step_size"):
        langevin_step(gauss_potential, x, theta, 0.0)
    with pytest.raises(ValueError, match="step_size"):
        langevin_step(gauss_potential, x, theta, -0.1)
    with pytest.raises(ValueError, match="step_size"):
        langevin_step(gauss_potential, x, theta, float("nan"))
    with pytest.raises(ValueError, match="x"):
        langevin_step(gauss_potential, torch.randn(10), theta, 0.1)
    with pytest.raises(ValueError, match="theta"):
        langevin_step(gauss_potential, x, torch.zeros(0), 0.1)  # empty
    with pytest.raises(ValueError, match="theta"):
        langevin_step(gauss_potential, x, torch.tensor([0.0, float("nan")]), 0.1)
    with pytest.raises(ValueError, match="potential"):  # non-finite values
        langevin_step(lambda x, t: gauss_potential(x, t) + float("inf"), x, theta, 0.1)
    with pytest.raises(ValueError, match="potential"):  # finite values, infinite gradient
        langevin_step(lambda x, t: x[:, 0].abs().sqrt(), torch.zeros(10, 2), theta, 0.1)
    with pytest.raises(ValueError, match="potential"):  # wrong output shape
        langevin_step(lambda x, t: gauss_potential(x, t)[:, None], x, theta, 0.1)
    with pytest.raises(ValueError, match="potential"):  # finite values, NaN gradient in theta
        reward_gradient(lambda x, t: gauss_potential(x, t) + 0 * t.sqrt().sum(), x, theta,
                        torch.randn(10))
    with pytest.raises(ValueError, match="rewards"):
        reward_gradient(gauss_potential, x, theta, torch.randn(9))
    with pytest.raises(ValueError, match="x_ref"):
        objective_gradient(gauss_potential, x, theta, torch.randn(10), 1.0, None)
    with pytest.raises(ValueError, match="kl_weight"):
        objective_gradient(gauss_potential, x, theta, torch.randn(10), -1.0, x)
    with pytest.raises(ValueError, match="x_ref"):
        init(gauss_potential, theta, LangevinConfig(kl_weight=0.5), shape=2)
    with pytest.raises(ValueError, match="optimizer"):
        init(gauss_potential, theta, LangevinConfig(optimizer="NoSuchOpt"), shape=2)
    with pytest.raises(ValueError, match="theta_ref"):
        init(gauss_potential, theta, LangevinConfig(), shape=2, theta_ref=torch.zeros(3))
    state = init(gauss_potential, theta, LangevinConfig(n_particles=10), shape=2)
    with pytest.raises(ValueError, match="reward"):
        step(state, gauss_potential, lambda x: torch.full((x.shape[0],), float("nan")))


# ----------------------------------------------------------------------------- the runner
def test_bench_runner_tiny_settings(tmp_path, capsys):
    argv = ["bench", "langevin", "--threads", "1", "--out", str(tmp_path), "--implicit-steps",
            "6", "--baseline-steps", "2", "--n-inner", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| method" in out and "unrolled T=3" in out and "speed-up of implicit" in out
    data = json.loads((tmp_path / "langevin.json").read_text())  # --out DIR: files in DIR
    assert len(data["table"]) == 4 and data["settings"]["n_inner"] == 3
    assert (tmp_path / "contours.png").exists()
    assert (tmp_path / "reward_curves.png").exists()


def test_langevin_speed_runner_quick(tmp_path, capsys):
    assert main(["bench", "langevin-speed", "--quick", "--repeats", "2", "--out",
                 str(tmp_path)]) == 0
    data = json.loads((tmp_path / "langevin_step_speed_quick.json").read_text())
    names = [r["candidate"] for r in data["rows"]]
    assert "samplegrad step, compiled" in names and "reference, jitted" in names
    assert all(v > 0 for v in data["ms"].values())
    assert "aten::" in (tmp_path / "langevin_step_speed_quick_profile.txt").read_text()


# ----------------------------------------------------------------------------- any potential
class GaussModule(torch.nn.Module):
    """V(x) = ||x - mu||^2 / 2 over particles of any shape; mu is the module's parameter."""

    def __init__(self, shape, frozen_scale=1.0):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(shape, dtype=DT))
        self.scale = torch.nn.Parameter(torch.tensor(frozen_scale, dtype=DT))

    def forward(self, x):
        return 0.5 * self.scale * (x - self.mu).pow(2).flatten(1).sum(-1)


def test_module_potential_equals_the_function_potential_and_trains_in_place():
    # the same problem as a function of a (2, 3) theta and as a module on (N, 2, 3) particles
    def fn_pot(x, theta):
        return 0.5 * (x - theta).pow(2).flatten(1).sum(-1)

    def reward(x):
        return -(x - 1.0).pow(2).flatten(1).sum(-1)

    cfg = LangevinConfig(step_size=0.1, lr=0.05, n_particles=64)
    module = GaussModule((2, 3))
    a = init(fn_pot, torch.zeros(2, 3, dtype=DT), cfg, shape=(2, 3), seed=3)
    b = init(module, None, cfg, shape=(2, 3), seed=3, params=[module.mu])
    assert a.theta.shape == (2, 3) and b.theta.shape == (6,)  # a module's theta is flat
    for _ in range(5):
        a, ia = step(a, fn_pot, reward, cfg)
        b, ib = step(b, module, reward, cfg)
        assert ia == pytest.approx(ib, rel=1e-12)
    torch.testing.assert_close(b.theta.detach().view(2, 3), a.theta.detach())
    torch.testing.assert_close(module.mu.detach(), a.theta.detach())  # written back in place
    assert float(module.scale.detach()) == 1.0  # not in params: untouched
    assert float(module.mu.detach().mean()) > 0.0  # moved toward the reward's optimum at 1


def test_module_potential_in_fit_and_baselines():
    module = GaussModule((2,))
    cfg = BaselineConfig(step_size=0.1, lr=0.05, n_particles=32, n_inner=3, kl_weight=0.1,
                         n_ref=32)
    theta_ref = torch.zeros(3, dtype=DT)  # mu (2,) and scale, flat
    theta_ref[2] = 1.0
    state, hist = fit(module, _gauss_reward, None, cfg, 4, shape=2, theta_ref=theta_ref)
    assert len(hist["theta"]) == 4 and len(hist["theta"][0]) == 3
    assert math.isfinite(hist["kl"][-1])
    state, _ = unrolled_step(state, module, _gauss_reward, cfg)
    state, _ = nested_step(state, module, _gauss_reward, cfg)
    torch.testing.assert_close(module.mu.detach(), state.theta.detach()[:2])
    with pytest.raises(ValueError, match="^potential: this state was not built"):
        step(state, GaussModule((2,)), _gauss_reward, cfg)


def test_image_shaped_particles_and_matrix_theta():
    def pot(x, theta):  # x (N, 1, 4, 4), theta (4, 4)
        return 0.5 * (x[:, 0] - theta).pow(2).sum((-1, -2))

    g = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 4, dtype=DT, generator=g)
    x = theta + torch.randn(20_000, 1, 4, 4, dtype=DT, generator=g)
    r = x[:, 0, 1, 2]  # E[R] = theta[1, 2]: gradient is the indicator of (1, 2)
    grad = reward_gradient(pot, x, theta, r)
    assert grad.shape == (4, 4)
    expected = torch.zeros(4, 4, dtype=DT)
    expected[1, 2] = 1.0
    assert (grad - expected).abs().max() < 5 * math.sqrt(2 / 20_000) * 3
    x1 = langevin_step(pot, x[:10], theta, 0.1, generator=g)
    assert x1.shape == (10, 1, 4, 4)


def test_issue_cases_name_the_argument():
    cfg = LangevinConfig(n_particles=8)
    # particle dimension vs theta dimension: named at init, not a raw broadcast error
    with pytest.raises(ValueError, match=r"^potential: failed on particles x of shape \(2, 3\) "
                                         r"with theta of shape \(2,\)"):
        init(gauss_potential, torch.zeros(2), cfg, shape=3)
    with pytest.raises(ValueError, match="^n_steps:"):
        langevin_sample(gauss_potential, torch.zeros(4, 2), torch.zeros(2), 0.1, float("nan"))
    with pytest.raises(ValueError, match="^n_steps:"):
        fit(gauss_potential, _gauss_reward, torch.zeros(2), cfg, float("nan"), shape=2)
    # lr=nan: refused at init (config or factory), not blamed on theta one step later
    with pytest.raises(ValueError, match="^lr:"):
        LangevinConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="^optimizer: the factory's optimizer has lr=nan"):
        init(gauss_potential, torch.zeros(2), cfg, shape=2,
             optimizer=lambda ps: torch.optim.SGD(ps, lr=float("nan")))
    # an optimizer step that makes theta non-finite is blamed on the optimizer
    state = init(gauss_potential, torch.zeros(2), cfg, shape=2,
                 optimizer=lambda ps: torch.optim.SGD(ps, lr=1e30))
    with pytest.raises(ValueError, match="^optimizer: its step made theta non-finite"):
        for _ in range(3):
            state, _ = step(state, gauss_potential, lambda x: 1e10 * x[:, 0], cfg)


def test_bad_init_arguments():
    cfg = LangevinConfig(n_particles=8)
    mod = GaussModule((2,))
    cases = [
        (lambda: init(gauss_potential, None, cfg, shape=2), ValueError, "^theta0:"),
        (lambda: init(gauss_potential, torch.zeros(2), cfg), ValueError, "^shape:"),
        (lambda: init(gauss_potential, torch.zeros(2), cfg, shape=(2, 0)), ValueError, "^shape:"),
        (lambda: init(gauss_potential, torch.zeros(2), cfg, shape=3, x0=torch.zeros(4, 2)),
         ValueError, "^shape:"),
        (lambda: init(gauss_potential, torch.zeros(2, dtype=torch.long), cfg, shape=2),
         ValueError, "^theta0:"),
        (lambda: init(gauss_potential, torch.zeros(2), cfg, x0=torch.zeros(4)), ValueError,
         "^x0:"),
        (lambda: init(gauss_potential, torch.zeros(2), cfg, shape=2,
                      x_ref=torch.zeros(4, 3)), ValueError, "^x_ref:"),
        (lambda: init(gauss_potential, torch.zeros(2), cfg, shape=2, seed=1.5), ValueError,
         "^seed:"),
        (lambda: init(gauss_potential, torch.zeros(2), {"lr": 1}, shape=2), TypeError,
         "^config:"),
        (lambda: init("V", torch.zeros(2), cfg, shape=2), TypeError, "^potential:"),
        (lambda: init(mod, torch.zeros(2), cfg, shape=2), ValueError, "^theta0:"),
        (lambda: init(gauss_potential, torch.zeros(2), cfg, shape=2, params=[]), ValueError,
         "^params:"),
        (lambda: init(mod, None, cfg, shape=2, params=[torch.nn.Parameter(torch.zeros(1))]),
         ValueError, "^params:"),
    ]
    for call, err, match in cases:
        with pytest.raises(err, match=match):
            call()


@settings(max_examples=30, deadline=None)
@given(n_steps=st.one_of(st.integers(max_value=-1), st.floats(), st.booleans(), st.text(),
                         st.none()))
def test_langevin_sample_rejects_every_bad_n_steps(n_steps):
    with pytest.raises(ValueError, match="^n_steps:"):
        langevin_sample(gauss_potential, torch.zeros(3, 2), torch.zeros(2), 0.1, n_steps)


@settings(max_examples=30, deadline=None)
@given(step_size=st.one_of(st.floats(max_value=0.0), st.just(float("nan")),
                           st.just(float("inf")), st.booleans(), st.text(max_size=2)))
def test_langevin_step_rejects_every_bad_step_size(step_size):
    with pytest.raises(ValueError, match="^step_size:"):
        langevin_step(gauss_potential, torch.zeros(3, 2), torch.zeros(2), step_size)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
       n=st.integers(2, 5))
def test_any_particle_shape_runs_and_keeps_its_shape(shape, n):
    def pot(x, theta):
        return 0.5 * (x - theta).pow(2).flatten(1).sum(-1)

    cfg = LangevinConfig(step_size=0.1, lr=0.1, n_particles=n)
    state = init(pot, torch.zeros(shape, dtype=DT), cfg, shape=shape)
    state, info = step(state, pot, lambda x: x.flatten(1)[:, 0], cfg)
    assert state.x.shape == (n, *shape) and state.theta.shape == shape
    assert math.isfinite(info["reward"])


def test_unrolled_baseline_with_a_flat_reward_takes_a_zero_step():
    cfg = BaselineConfig(step_size=0.1, lr=0.5, n_particles=16, n_inner=3)
    state = init(gauss_potential, torch.tensor([0.3, -0.2], dtype=DT), cfg, shape=2, seed=0)
    new, info = unrolled_step(state, gauss_potential, lambda x: (x[:, 0] > 0).to(x.dtype), cfg)
    assert info["grad_norm"] == 0.0
    torch.testing.assert_close(new.theta.detach(), torch.tensor([0.3, -0.2], dtype=DT))


# ----------------------------------------------------------------------------- compile
def _eager_and_compiled(cfg, potential, reward, n=4, **init_kw):
    import dataclasses as dc

    ccfg = dc.replace(cfg, compile="aot_eager")  # the same graph as inductor, compiled fast
    out = []
    for c in (cfg, ccfg):
        state = init(potential, init_kw.get("theta0"), c, **{k: v for k, v in init_kw.items()
                                                          if k != "theta0"})
        infos = []
        for _ in range(n):
            state, info = step(state, potential, reward, c)
            infos.append(info)
        out.append((state, infos))
    return out


def test_compiled_step_follows_the_eager_step():
    # reward + KL toward a theta_ref population: the compiled math draws the same noise
    cfg = LangevinConfig(step_size=0.1, lr=0.05, n_particles=32, n_ref=16, kl_weight=0.5,
                         ref_burn_in=2)
    (a, ia), (b, ib) = _eager_and_compiled(
        cfg, gauss_potential, lambda x: -(x - 1.0).pow(2).sum(-1),
        theta0=torch.zeros(2, dtype=DT), shape=2, theta_ref=torch.ones(2, dtype=DT), seed=4)
    torch.testing.assert_close(b.x, a.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.x_ref, a.x_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.theta.detach(), a.theta.detach(), rtol=1e-12, atol=1e-12)
    assert [i["reward"] for i in ib] == pytest.approx([i["reward"] for i in ia], rel=1e-12)
    assert not torch.equal(a.theta.detach(), torch.zeros(2, dtype=DT))  # it moved


def test_compiled_step_with_a_module_potential_writes_back():
    module = GaussModule((2,))
    cfg = LangevinConfig(step_size=0.1, lr=0.05, n_particles=16, compile="aot_eager")
    state = init(module, None, cfg, shape=2, seed=1, params=[module.mu])
    for _ in range(3):
        state, _ = step(state, module, lambda x: x[:, 0], cfg)
    torch.testing.assert_close(module.mu.detach(), state.theta.detach().view(2))
    assert float(module.mu.detach()[0]) > 0  # pushed toward larger x_1


def test_compiled_step_checks_values_and_shapes():
    cfg = LangevinConfig(n_particles=8, compile="aot_eager")
    state = init(gauss_potential, torch.zeros(2), cfg, shape=2)
    with pytest.raises(ValueError, match="^reward: returned non-finite"):
        step(state, gauss_potential, lambda x: x[:, 0] / 0.0 * 0.0, cfg)
    with pytest.raises(ValueError, match="^reward: must return one value per particle"):
        step(state, gauss_potential, lambda x: x, cfg)
    for bad in (None, 1, ""):
        with pytest.raises(ValueError, match="^compile:"):
            LangevinConfig(compile=bad)
