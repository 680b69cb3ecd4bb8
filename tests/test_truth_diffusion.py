"""DDPM and Implicit Diffusion (finetuning, Langevin estimators) pinned to independent truths.

The truths are written here from the DDPM paper (Ho et al. 2020) and docs/methods.md:
the posterior ``q(x_{j} | x_{j+1}, x_0)`` in its two-coefficient form, the exact noise
predictor of Gaussian data, the Gaussian KL of ``torch.distributions``, and a plainly written
ancestral loop differentiated by autograd. None calls the library's step helpers. Each test
names the source mutations it was checked to catch (introduced one at a time in a private
copy of the source; see docs/mutation.md).
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from samplegrad.diffusion import (
    EpsMLP,
    ddpm_loss,
    draw_noise,
    linear_alpha_bars,
    sample,
    sample_path,
    sampling_schedule,
    step_mean,
    timestep_embedding,
)
from samplegrad.implicit import langevin, langevin_baselines
from samplegrad.implicit.finetune import adjoint_grad, path_kl

DT = torch.float64
N_TRAIN = 1000


def ddpm_alpha_bars():
    """DDPM's schedule (betas linear from 1e-4 to 0.02 over 1000 steps), written out."""
    betas = [1e-4 + (0.02 - 1e-4) * i / (N_TRAIN - 1) for i in range(N_TRAIN)]
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return torch.tensor(out, dtype=DT)


def strided(n_steps):
    """Per step j: (tau_j, alpha_bar(tau_j), alpha_bar(tau_{j-1}) or 1)."""
    ab = ddpm_alpha_bars()
    taus = [j * N_TRAIN // n_steps for j in range(n_steps)]
    return [(tau, float(ab[tau]), 1.0 if j == 0 else float(ab[taus[j - 1]]))
            for j, tau in enumerate(taus)]


class LinearEps(nn.Module):
    """A small noise model with parameters (for functional_call): affine in x, time-dependent."""

    def __init__(self, d=3, seed=0, scale=0.3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(scale * torch.randn(d, d, generator=g, dtype=DT))
        self.b = nn.Parameter(scale * torch.randn(d, generator=g, dtype=DT))
        self.c = nn.Parameter(scale * torch.randn(d, generator=g, dtype=DT))

    def forward(self, x, t):
        s = t.to(x.dtype)[:, None] / N_TRAIN
        return torch.tanh(x @ self.w) + self.b + s * self.c * x


# ----------------------------------------------------------------------- DDPM step
def test_step_mean_and_variance_are_the_ddpm_posterior():
    # mu(x_{j+1}) = E[x_j | x_{j+1}, x_0 = x0_hat] with x0_hat the model's clean prediction,
    # in the posterior's two-coefficient form; sigma_j^2 the posterior variance (j >= 1) and
    # beta_0 at j = 0.
    # catches: the noise term's sign flipped or scaled (coef_eps), 1/sqrt(alpha) as
    # sqrt(alpha), the posterior variance without its (1 - ab_prev) / (1 - ab) factor,
    # a stride off by one
    model = LinearEps(d=4)
    n_steps = 10
    sched = sampling_schedule(linear_alpha_bars(N_TRAIN), n_steps, DT)
    x = torch.randn(6, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    for j, (tau, ab, ab_prev) in enumerate(strided(n_steps)):
        assert int(sched.timesteps[j]) == tau
        alpha, beta = ab / ab_prev, 1.0 - ab / ab_prev
        with torch.no_grad():
            eps = model(x, torch.full((6,), tau))
            mu = step_mean(model, x, j, sched)
        x0_hat = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        post_mean = (math.sqrt(ab_prev) * beta / (1 - ab) * x0_hat
                     + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab) * x)
        torch.testing.assert_close(mu, post_mean, rtol=1e-9, atol=1e-12)
        var = beta if j == 0 else (1 - ab_prev) / (1 - ab) * beta
        assert float(sched.sigma[j]) ** 2 == pytest.approx(var, rel=1e-9)


def test_ddpm_loss_is_zero_for_the_true_noise_and_one_for_zero():
    # x0 = c (one fixed vector): x_t = sqrt(ab) c + sqrt(1 - ab) eps, so the predictor
    # (x_t - sqrt(ab) c) / sqrt(1 - ab) recovers eps exactly and L_simple = 0; the zero
    # predictor has L_simple = E[eps^2] = 1 (4000 x 3 draws: within 5 standard errors).
    # catches: sqrt(ab) and sqrt(1 - ab) swapped, the noise term's sign, a timestep
    # different from the one the model is given
    ab = ddpm_alpha_bars()
    c = torch.tensor([0.5, -1.0, 0.25], dtype=DT)

    def oracle(x, t):
        a = ab[t][:, None]
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    x0 = c.expand(4000, 3).clone()
    g = torch.Generator().manual_seed(2)
    assert float(ddpm_loss(oracle, x0, linear_alpha_bars(N_TRAIN), g)) < 1e-20
    zero = float(ddpm_loss(lambda x, t: torch.zeros_like(x), x0, linear_alpha_bars(N_TRAIN), g))
    assert abs(zero - 1.0) < 5 * math.sqrt(2 / 12_000)


def test_sampler_with_the_exact_noise_predictor_draws_the_gaussian_data():
    # data N(m, s^2 I): eps*(x, t) = sqrt(1 - ab) (x - sqrt(ab) m) / (ab s^2 + 1 - ab) is the
    # exact noise predictor, so the 1000-step ancestral sampler draws the data law (up to
    # the last step's extra std 0.01 and a small discretization error, bounded by 3% of s^2
    # here: 1.8% measured on 10^5 samples). 4000 samples: mean within 5 standard errors,
    # variance within 3% + 5 se.
    # catches: the noise term's sign in the step mean, a wrong per-step noise scale
    m, s2, d, n = 0.7, 0.25, 2, 4000
    ab = ddpm_alpha_bars()

    def oracle(x, t):
        a = ab[t][:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s2 + 1 - a)

    sched = sampling_schedule(linear_alpha_bars(N_TRAIN), N_TRAIN, DT)
    noise = draw_noise(sched, n, d, torch.Generator().manual_seed(3), DT)
    with torch.no_grad():
        x = sample(oracle, noise, sched)
    se_mean = math.sqrt(s2 / n)
    assert (x.mean(0) - m).abs().max() < 5 * se_mean
    var = x.var(0)
    se_var = s2 * math.sqrt(2 / (n - 1))
    assert ((var - s2).abs() < 0.03 * s2 + 5 * se_var).all(), var


def test_sampler_replays_the_documented_noise_convention():
    # noise[T] is x_T and noise[j] the noise of step j (x_{j+1} -> x_j), a plain loop with
    # the posterior mean and standard deviation written out.
    # catches: the noise indices reversed (invisible in distribution), x_T taken from
    # noise[0], the path stored in the wrong order
    model = LinearEps(d=3, seed=9)
    params = dict(model.named_parameters())
    n_steps = 5
    sched = sampling_schedule(linear_alpha_bars(N_TRAIN), n_steps, DT)
    noise = draw_noise(sched, 4, 3, torch.Generator().manual_seed(10), DT)
    xs = [noise[n_steps]]
    with torch.no_grad():
        for j, sigma in reversed(list(enumerate(step_sigmas(n_steps)))):
            tau, ab, abp = strided(n_steps)[j]
            xs.append(plain_means(model, params, xs[-1], tau, ab, abp) + sigma * noise[j])
        path = sample_path(model, noise, sched)
        x0 = sample(model, noise, sched)
    torch.testing.assert_close(path, torch.stack(xs[::-1]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x0, xs[-1], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------- path KL
def plain_means(model, params, x, tau, ab, ab_prev):
    """``mu(x)`` of one ancestral step written out: (x - beta / sqrt(1 - ab) eps) / sqrt(alpha)."""
    alpha = ab / ab_prev
    eps = torch.func.functional_call(model, params, (x, torch.full((x.shape[0],), tau)))
    return (x - (1 - alpha) / math.sqrt(1 - ab) * eps) / math.sqrt(alpha)


def step_sigmas(n_steps):
    return [math.sqrt(1 - ab / abp) if j == 0 else math.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
            for j, (_, ab, abp) in enumerate(strided(n_steps))]


def test_path_kl_is_the_sum_of_gaussian_transition_kls():
    # KL(N(mu, sigma^2 I) || N(mu_ref, sigma^2 I)) per step from torch.distributions, summed
    # along a stored path. catches: the 1/2 missing (a factor 2), sigma instead of sigma^2,
    # a step evaluated at the wrong state (path[j] instead of path[j + 1])
    model = LinearEps(d=3)
    params = {k: v.detach() for k, v in model.named_parameters()}
    ref = {k: v + 0.1 * torch.randn(v.shape, dtype=DT, generator=torch.Generator().manual_seed(4))
           for k, v in params.items()}
    n_steps = 6
    sched = sampling_schedule(linear_alpha_bars(N_TRAIN), n_steps, DT)
    noise = draw_noise(sched, 5, 3, torch.Generator().manual_seed(5), DT)
    with torch.no_grad():
        path = sample_path(lambda x, t: torch.func.functional_call(model, params, (x, t)),
                           noise, sched)
        kl = path_kl(model, params, ref, path, sched)
    expected = torch.zeros(5, dtype=DT)
    for j, ((tau, ab, abp), sigma) in enumerate(zip(strided(n_steps), step_sigmas(n_steps))):
        mu = plain_means(model, params, path[j + 1], tau, ab, abp)
        mu_ref = plain_means(model, ref, path[j + 1], tau, ab, abp)
        expected += kl_divergence(Normal(mu, sigma), Normal(mu_ref, sigma)).sum(-1)
    assert bool((expected > 0).all())
    torch.testing.assert_close(kl, expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------- finetune adjoint
def reward(x):
    return torch.sin(2 * x).sum(-1) - 0.2 * (x - 0.5).pow(2).sum(-1)


@pytest.mark.parametrize("kl_weight", [0.0, 0.7])
def test_adjoint_gradient_equals_autograd_through_a_plain_loop(kl_weight):
    # loss = -mean[R(x_0) - lambda sum_j KL_j], each KL_j the Gaussian transition KL from
    # torch.distributions, x_j = mu_j(x_{j+1}) + sigma_j z_j run plainly with autograd.
    # catches: the path KL's 1/2 (the adjoint and the library's unrolled reference share it),
    # the KL term's sign, the KL scaled by lambda instead of lambda / N, the adjoint's
    # reward gradient without 1/N, a step or parameter gradient dropped
    model = LinearEps(d=3, seed=6)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    ref = {k: v.detach() + 0.15 * torch.randn(v.shape, dtype=DT,
                                              generator=torch.Generator().manual_seed(7))
           for k, v in params.items()}
    n_steps, n = 5, 7
    sched = sampling_schedule(linear_alpha_bars(N_TRAIN), n_steps, DT)
    noise = draw_noise(sched, n, 3, torch.Generator().manual_seed(8), DT)
    steps, sigmas = strided(n_steps), step_sigmas(n_steps)
    x = noise[-1]
    states = [x]
    kl = torch.zeros(n, dtype=DT)
    for j in reversed(range(n_steps)):
        tau, ab, abp = steps[j]
        mu = plain_means(model, params, x, tau, ab, abp)
        if kl_weight:
            mu_ref = plain_means(model, ref, x, tau, ab, abp)
            kl = kl + kl_divergence(Normal(mu, sigmas[j]), Normal(mu_ref, sigmas[j])).sum(-1)
        x = mu + sigmas[j] * noise[j]
        states.append(x)
    loss = -(reward(x) - kl_weight * kl).mean()
    g_ref = torch.autograd.grad(loss, list(params.values()))
    path = torch.stack(states[::-1]).detach()
    grads, info = adjoint_grad(model, params, ref, path, sched, reward, kl_weight)
    for (name, g), gr in zip(grads.items(), g_ref):
        torch.testing.assert_close(g, gr, rtol=1e-9, atol=1e-12, msg=name)
    assert info["reward"] == pytest.approx(float(reward(x.detach()).mean()), rel=1e-12)
    if kl_weight:
        assert info["kl"] == pytest.approx(float(kl.detach().mean()), rel=1e-9)


def test_timestep_embedding_is_the_transformer_sinusoid():
    # [cos(t w_i), sin(t w_i)], w_i = 10000^(-i / half), i < half = dim / 2.
    # catches: the frequencies' sign or their / half, t divided by w, cos/sin concatenated
    # along the wrong axis
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 8)
    w = torch.tensor([10_000.0 ** (-i / 4) for i in range(4)], dtype=DT)
    args = t.to(DT)[:, None] * w
    torch.testing.assert_close(emb, torch.cat([args.cos(), args.sin()], 1), rtol=1e-12,
                               atol=1e-12)


def test_schedule_and_network_sizes_accept_their_smallest_values():
    # the smallest legal sizes are accepted and one less is refused naming the argument.
    # catches: each minimum raised by one, a bound turned strict
    assert linear_alpha_bars(2).shape == (2,)
    assert linear_alpha_bars(4, 0.3, 0.3).shape == (4,)  # beta_start == beta_end
    for kw in ({"n_train": 1}, {"beta_start": 0.0}, {"beta_end": 1.0},
               {"beta_start": 0.2, "beta_end": 0.1}):
        with pytest.raises(ValueError):
            linear_alpha_bars(**kw)
    assert sampling_schedule(linear_alpha_bars(2), 2).n_steps == 2
    net = EpsMLP(dim=1, hidden=1, n_blocks=0, temb_dim=2)
    assert net(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)).shape == (3, 1)
    for kw, name in (({"dim": 0}, "dim"), ({"hidden": 0}, "hidden"),
                     ({"n_blocks": -1}, "n_blocks"), ({"temb_dim": 3}, "temb_dim")):
        with pytest.raises(ValueError, match=name):
            EpsMLP(**{"dim": 1, "hidden": 1, "n_blocks": 0, "temb_dim": 2, **kw})


# ----------------------------------------------------------------------- Langevin estimators
def test_langevin_gradients_are_the_finite_sample_covariance_and_mean_differences():
    # docs/methods.md#reward-gradient: grad E[R] = -Cov(R, grad_theta V) with the 1/(N-1)
    # sample covariance; grad KL(ref || pi) = mean_ref grad V - mean_pi grad V; the objective
    # -E[R] + lambda KL has gradient -reward_gradient + lambda kl_gradient. Per-particle
    # gradients by autograd, one particle at a time; exact to round-off on 20 particles.
    # catches: R + mean(R) for R - mean(R), 1/(N+1) or 1/(N-2) for 1/(N-1), the KL weights'
    # sign, lambda dropped from the objective
    def potential(x, th):
        return 0.5 * ((x - th[:2]) ** 2).sum(-1) + th[2] * torch.sin(x).sum(-1)

    g = torch.Generator().manual_seed(15)
    theta = torch.tensor([0.3, -0.7, 0.4], dtype=DT)
    x = torch.randn(20, 2, generator=g, dtype=DT)
    x_ref = torch.randn(12, 2, generator=g, dtype=DT) + 0.5
    rewards = torch.randn(20, generator=g, dtype=DT) + 3.0  # a large mean: centring matters

    def grad_v(points):
        out = []
        for p in points:
            th = theta.clone().requires_grad_()
            gi, = torch.autograd.grad(potential(p[None], th).sum(), th)
            out.append(gi)
        return torch.stack(out)

    gx, gref = grad_v(x), grad_v(x_ref)
    cov = ((rewards - rewards.mean())[:, None] * (gx - gx.mean(0))).sum(0) / (len(x) - 1)
    torch.testing.assert_close(langevin.reward_gradient(potential, x, theta, rewards), -cov,
                               rtol=1e-10, atol=1e-12)
    kl = gref.mean(0) - gx.mean(0)
    torch.testing.assert_close(langevin.kl_gradient(potential, x, theta, x_ref), kl,
                               rtol=1e-10, atol=1e-12)
    obj = langevin.objective_gradient(potential, x, theta, rewards, kl_weight=0.7, x_ref=x_ref)
    torch.testing.assert_close(obj, cov + 0.7 * kl, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_ref", [True, False])
def test_langevin_fit_logs_the_documented_history(with_ref):
    # fit's history, every log_every steps and at the last: step, reward, kl (the importance
    # estimate on the reference particles when theta_ref is known, else NaN), grad_norm,
    # theta after the update, cumulative time.
    # catches: the logging condition, the KL logged when no reference is known (or not
    # logged when one is), theta or grad_norm not recorded, time decreasing
    def potential(x, th):
        return 0.5 * ((x - th) ** 2).sum(-1)

    def reward(x):
        return -(x[:, 0] - 1.0) ** 2

    g = torch.Generator().manual_seed(16)
    x0 = torch.randn(64, 2, generator=g, dtype=DT)
    theta0 = torch.zeros(2, dtype=DT)
    ref = {"theta_ref": torch.tensor([0.5, 0.0], dtype=DT)} if with_ref else {}
    cfg = langevin.LangevinConfig(step_size=0.1, lr=0.05, kl_weight=0.3 if with_ref else 0.0,
                                  n_ref=32)
    state, hist = langevin.fit(potential, reward, theta0, cfg, n_steps=5, log_every=2, x0=x0,
                               seed=3, **ref)
    assert hist["step"] == [2, 4, 5]
    assert len(hist["reward"]) == len(hist["grad_norm"]) == len(hist["theta"]) == 3
    assert hist["theta"][-1] == state.theta.detach().tolist()
    assert hist["theta"][0] != hist["theta"][-1] and all(n > 0 for n in hist["grad_norm"])
    assert all(0 <= a <= b for a, b in zip(hist["time"], hist["time"][1:]))
    if with_ref:
        kl = langevin.kl_estimate(potential, state.x_ref, state.theta.detach(),
                                  ref["theta_ref"])
        assert hist["kl"][-1] == pytest.approx(float(kl), rel=1e-12)
        assert all(math.isfinite(k) for k in hist["kl"])
    else:
        assert all(math.isnan(k) for k in hist["kl"])


def test_langevin_init_draws_the_reference_particles_from_its_seed():
    # with theta_ref, init draws n_ref reference particles N(0, I) and runs ref_burn_in ULA
    # steps on them, all from the seed's generator: the same seed gives the same particles,
    # another seed others; theta_ref is kept in the state.
    # catches: the global generator used instead of the seed's, theta_ref dropped
    def potential(x, th):
        return 0.5 * ((x - th) ** 2).sum(-1)

    x0 = torch.zeros(8, 2, dtype=DT)
    cfg = langevin.LangevinConfig(n_ref=16, ref_burn_in=3, kl_weight=0.5)
    theta_ref = torch.tensor([1.0, -1.0], dtype=DT)
    states = []
    for seed in (4, 4, 5):
        torch.manual_seed(seed * 7)  # the global stream must not matter
        states.append(langevin.init(potential, torch.zeros(2, dtype=DT), cfg, x0=x0,
                                    theta_ref=theta_ref, seed=seed))
    a, b, c = states
    assert a.x_ref.shape == (16, 2) and a.x_ref.dtype == DT
    torch.testing.assert_close(a.x_ref, b.x_ref)
    assert not torch.allclose(a.x_ref, c.x_ref)
    torch.testing.assert_close(a.theta_ref, theta_ref)


def test_unrolled_langevin_is_autograd_through_a_plain_ula_loop():
    # x <- x - gamma grad_x V(x, theta) + sqrt(2 gamma) z, z drawn in order from the given
    # generator; the unrolled result and its theta-gradient (through grad_x V: second order)
    # match a plain loop differentiated by autograd; langevin_sample is the same chain
    # without the graph.
    # catches: the drift's sign or gamma, sqrt(2 gamma) as sqrt(gamma), the generator
    # ignored, the graph not kept through grad_x V
    def potential(x, th):
        return 0.5 * th[0] * (x**2).sum(-1) + th[1] * torch.sin(x).sum(-1)

    def plain(x, th, gen, n_steps, gamma=0.1):
        for _ in range(n_steps):
            xg = x if x.requires_grad else x.requires_grad_()
            gx, = torch.autograd.grad(potential(xg, th).sum(), xg, create_graph=True)
            z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            x = x - gamma * gx + math.sqrt(2 * gamma) * z
        return x

    x0 = torch.randn(6, 2, dtype=DT, generator=torch.Generator().manual_seed(17))
    th = torch.tensor([1.3, 0.4], dtype=DT, requires_grad=True)
    out = langevin_baselines.unrolled_trajectory(potential, x0, th, 0.1, 4,
                                                 generator=torch.Generator().manual_seed(18))
    ref = plain(x0.clone(), th, torch.Generator().manual_seed(18), 4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g, = torch.autograd.grad(torch.cos(out).sum(), th)
    g_ref, = torch.autograd.grad(torch.cos(ref).sum(), th)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert g_ref.abs().min() > 1e-3
    fixed = langevin.langevin_sample(potential, x0, th.detach(), 0.1, 4,
                                     generator=torch.Generator().manual_seed(18))
    torch.testing.assert_close(fixed, ref.detach(), rtol=1e-12, atol=1e-12)


def test_unrolled_baseline_step_is_sgd_on_the_pathwise_reward_and_kl_gradients():
    # the unrolled baseline (fresh N(0, I) start, n_inner ULA steps with the graph): gradient
    # -grad mean R(x_T) by autograd, plus lambda (mean_ref grad V - mean grad V) on the
    # reference particles advanced one ULA step at theta_ref; one SGD step; all draws from
    # the state's generator in that order.
    # catches: the KL term's sign or weight, the reference not advanced, info's values
    def potential(x, th):
        return 0.5 * ((x - th) ** 2).sum(-1)

    def reward(x):
        return torch.sin(x).sum(-1)

    cfg = langevin_baselines.BaselineConfig(step_size=0.1, lr=0.2, kl_weight=0.4, n_ref=8,
                                            n_inner=3)
    x0 = torch.zeros(5, 2, dtype=DT)
    theta_ref = torch.tensor([0.5, -0.5], dtype=DT)
    state = langevin.init(potential, torch.tensor([0.1, 0.2], dtype=DT), cfg, x0=x0,
                          theta_ref=theta_ref, seed=2)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(state.generator.get_state())
    theta = state.theta.detach().clone().requires_grad_()
    x_ref = state.x_ref.clone()
    new, info = langevin_baselines.unrolled_step(state, potential, reward, cfg)
    x = torch.randn(x0.shape, generator=gen, dtype=DT)
    for _ in range(3):
        xg = x if x.requires_grad else x.requires_grad_()
        gx, = torch.autograd.grad(potential(xg, theta).sum(), xg, create_graph=True)
        x = x - 0.1 * gx + math.sqrt(0.2) * torch.randn(x.shape, generator=gen, dtype=DT)
    r = reward(x)
    g, = torch.autograd.grad(-r.mean(), theta)
    x_ref = x_ref - 0.1 * (x_ref - theta_ref) + math.sqrt(0.2) * torch.randn(
        x_ref.shape, generator=gen, dtype=DT)
    g = g + 0.4 * ((theta.detach() - x_ref).mean(0) - (theta.detach() - x.detach()).mean(0))
    torch.testing.assert_close(new.theta.detach(), theta.detach() - 0.2 * g, rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(new.x_ref, x_ref, rtol=1e-12, atol=1e-12)
    assert info["reward"] == pytest.approx(float(r.detach().mean()), rel=1e-12)
    assert info["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)

