"""Implicit Diffusion, Langevin part: gradient estimators against closed forms, the KL sign,
ULA's stationary law, the single loop and its baselines, the hexagon task, bad input."""

import json
import math

import pytest
import torch

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
    state = init(gauss_potential, torch.tensor([2.0, -1.0]), cfg, dim=2,
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
    state, hist = fit(gauss_potential, _gauss_reward, torch.tensor([-1.0]), cfg, 200, dim=1,
                      seed=0, log_every=10)
    assert len(hist["step"]) == 20 and hist["step"][-1] == 200 == state.step
    assert all(t1 >= t0 for t0, t1 in zip(hist["time"], hist["time"][1:]))
    assert math.isnan(hist["kl"][-1])  # no reference given
    assert 1.0 < float(state.theta.detach()) < 3.0  # moved from -1 toward the optimum theta = 2
    assert sum(hist["reward"][-5:]) / 5 > hist["reward"][0] + 0.2


def test_fit_hexagon_improves_exact_reward():
    theta0 = torch.tensor(HEXAGON_THETA_INIT)
    state, hist = fit(mixture_potential, hexagon_reward, theta0, LangevinConfig(n_particles=400),
                      300, dim=2, seed=0, log_every=100)
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
        langevin_step(gauss_potential, x, torch.zeros(1, 2), 0.1)
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
        init(gauss_potential, theta, LangevinConfig(kl_weight=0.5), dim=2)
    with pytest.raises(ValueError, match="optimizer"):
        init(gauss_potential, theta, LangevinConfig(optimizer="NoSuchOpt"), dim=2)
    with pytest.raises(ValueError, match="theta_ref"):
        init(gauss_potential, theta, LangevinConfig(), dim=2, theta_ref=torch.zeros(3))
    state = init(gauss_potential, theta, LangevinConfig(n_particles=10), dim=2)
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
