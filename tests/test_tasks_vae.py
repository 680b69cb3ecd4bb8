"""Categorical VAE: ELBO / IWAE against exact enumeration, training surrogates, checkpoint
and resume identity."""

import math
import os
import signal
from dataclasses import replace

import pytest
import torch

import samplegrad as sg
from samplegrad.checkpoint import load_checkpoint
from samplegrad_bench.estimators import (
    bench_methods,
    default_knobs,
    fit_n_samples,
    is_score_function,
    unsupported,
)
from samplegrad_bench.tasks.vae import (
    VAEConfig,
    VAETrainConfig,
    VAETrainState,
    all_configs,
    bernoulli_log_lik,
    enumerate_log_px,
    enumerate_neg_elbo,
    fit,
    iwae_bound,
    kl_to_uniform,
    load_train_state,
    log_q,
    neg_elbo,
    save_train_state,
    train_init,
    train_step,
    training_loss,
)

TINY = VAEConfig(n_pixels=4, n_latent=2, n_classes=3, hidden=(8,))


def _tiny_model(seed=0, scale=3.0):
    torch.manual_seed(seed)
    model = train_init(TINY, VAETrainConfig(), seed).model
    with torch.no_grad():  # larger weights: peaked likelihoods, a visible ELBO/IWAE gap
        for p in model.parameters():
            p.mul_(scale)
    return model


def _tiny_data(n=5, seed=1):
    return torch.bernoulli(torch.full((n, 4), 0.5), generator=torch.Generator().manual_seed(seed))


def _posterior_moments(model, x):
    """Exact mean and variance of -log p(x|z) under q, per datapoint."""
    z = all_configs(2, 3)[:, None]
    q = log_q(model.encode(x), z).exp()
    r = -bernoulli_log_lik(model.decode(z), x)
    m = (q * r).sum(0)
    return m, (q * (r - m) ** 2).sum(0)


def test_all_configs_enumerates_every_one_hot():
    z = all_configs(2, 3)
    assert z.shape == (9, 2, 3)
    assert len({tuple(c.argmax(-1).tolist()) for c in z}) == 9
    assert torch.equal(z.sum(-1), torch.ones(9, 2))


def test_kl_to_uniform_matches_definition():
    logits = torch.randn(4, 2, 3)
    q = torch.softmax(logits, -1)
    direct = (q * (q.log() - math.log(1 / 3))).sum((-2, -1))
    torch.testing.assert_close(kl_to_uniform(logits), direct)
    assert torch.allclose(kl_to_uniform(torch.zeros(1, 2, 3)), torch.zeros(1), atol=1e-6)


@torch.no_grad()
def test_enumerated_elbo_is_log_px_minus_posterior_kl():
    model, x = _tiny_model(), _tiny_data()
    logp = enumerate_log_px(model, x)
    z = all_configs(2, 3)[:, None]
    log_joint = bernoulli_log_lik(model.decode(z), x) + 2 * math.log(1 / 3)  # (C, B)
    logpost = log_joint - logp
    lq = log_q(model.encode(x), z)
    kl_post = (lq.exp() * (lq - logpost)).sum(0)
    torch.testing.assert_close(-enumerate_neg_elbo(model, x), logp - kl_post, atol=1e-5, rtol=0)
    assert bool((kl_post > 1e-3).all())  # the bound is strict here: a meaningful check
    # log p(x) sums to one over all 2^4 binary images
    imgs = all_configs(4, 2)[..., 1]
    torch.testing.assert_close(enumerate_log_px(model, imgs).logsumexp(0),
                               torch.tensor(0.0), atol=1e-5, rtol=0)


def test_expected_reconstruction_agrees_with_library_enumeration():
    model, x = _tiny_model(), _tiny_data(n=1)
    logits = model.encode(x)[0].detach()
    value, _ = sg.exact(lambda z: -bernoulli_log_lik(model.decode(z), x[0]), logits)
    m, _ = _posterior_moments(model, x)
    torch.testing.assert_close(value.detach(), m[0].detach(), atol=1e-5, rtol=0)


def test_monte_carlo_elbo_with_exact_samples_matches_enumeration():
    model, x = _tiny_model(), _tiny_data()
    s = 20000
    est = neg_elbo(model, x, s, torch.Generator().manual_seed(0), chunk=5000)
    exact = enumerate_neg_elbo(model, x)
    _, var = _posterior_moments(model, x)
    tol = 5 * (var.detach() / s).sqrt() + 1e-5
    assert bool(((est - exact).abs() <= tol).all()), (est, exact, tol)


@torch.no_grad()
def test_iwae_bound_below_log_px_and_converges():
    model, x = _tiny_model(), _tiny_data()
    logp = enumerate_log_px(model, x)
    elbo = -enumerate_neg_elbo(model, x)
    gen = torch.Generator().manual_seed(0)
    reps = 400
    xr = x.repeat(reps, 1)  # reps independent IWAE-10 estimates per datapoint, vectorized
    iw10 = iwae_bound(model, xr, 10, gen, batch=1000).view(reps, -1)
    mean, se = iw10.mean(0), iw10.std(0) / math.sqrt(reps)
    assert bool((mean <= logp + 4 * se).all())  # a lower bound in expectation
    assert bool((mean >= elbo - 4 * se).all())  # and at least the ELBO (monotone in S)
    assert bool(((mean - elbo) > 4 * se).any())  # strictly tighter somewhere
    iw1 = iwae_bound(model, xr, 1, gen, batch=1000).view(reps, -1)
    assert bool(((iw1.mean(0) - elbo).abs() <= 5 * iw1.std(0) / math.sqrt(reps)).all())
    # S -> infinity: log of a mean of S weights; delta-method sd = sd(w) / (sqrt(S) p(x))
    s = 200_000
    z = all_configs(2, 3)[:, None]
    lq = log_q(model.encode(x), z)
    w = (bernoulli_log_lik(model.decode(z), x) + 2 * math.log(1 / 3) - lq).exp()
    var_w = (lq.exp() * (w - logp.exp()) ** 2).sum(0)
    tol = 5 * (var_w / s).sqrt() / logp.exp()
    big = iwae_bound(model, x, s, gen, chunk=20_000)
    assert bool(((big - logp).abs() < tol).all()), (big, logp, tol)
    assert float(tol.max()) < 0.1  # the check is meaningful


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="n_classes"):
        VAEConfig(n_classes=1)
    with pytest.raises(ValueError, match="lr"):
        VAETrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        VAETrainConfig(batch_size=0)
    model, x = _tiny_model(), _tiny_data()
    with pytest.raises(ValueError, match="n_samples"):
        neg_elbo(model, x, 0)
    with pytest.raises(ValueError, match="n_samples"):
        iwae_bound(model, x, 0)
    state = train_init(TINY, VAETrainConfig(), 0)
    with pytest.raises(ValueError, match="steps"):
        fit(state, x, VAETrainConfig(), -1)


@pytest.mark.parametrize("name", ["straight_through", "reinforce", "rloo", "redge_exact"])
def test_training_loss_value_is_unbiased_for_neg_elbo(name):
    """For estimators feeding hard samples to the decoder, the surrogate's value is an
    unbiased estimate of the batch-mean −ELBO."""
    model, x = _tiny_model(), _tiny_data()
    cfg = VAETrainConfig(estimator=name, knobs=default_knobs(name),
                      n_samples=2 if name == "rloo" else 1)
    reps, copies = 20, 150  # each value averages 150 independent copies of the batch
    xr = x.repeat(copies, 1)
    vals = torch.tensor([float(training_loss(model, xr, cfg)[0].detach())
                         for _ in range(reps)])
    exact = float(enumerate_neg_elbo(model, x).mean())
    assert abs(float(vals.mean()) - exact) < 5 * float(vals.std()) / math.sqrt(reps)


@pytest.mark.parametrize("name", bench_methods())
def test_every_estimator_trains_encoder_and_decoder(name):
    model, x = _tiny_model(), _tiny_data()
    if unsupported(name, 2, TINY.n_classes):  # ARM/DisARM: a binary-latent model
        torch.manual_seed(0)
        model = train_init(replace(TINY, n_classes=2), VAETrainConfig(), 0).model
    cfg = VAETrainConfig(estimator=name, knobs=default_knobs(name),
                      n_samples=fit_n_samples(name, 1))
    loss, vals = training_loss(model, x, cfg, baseline=5.0)
    per_datapoint = is_score_function(name)  # score functions: one value per image
    assert vals.shape == ((cfg.n_samples, len(x)) if per_datapoint else (cfg.n_samples,))
    loss.backward()
    enc = model.encoder[0].weight.grad
    dec = model.decoder[-1].weight.grad
    assert enc is not None and dec is not None
    assert bool(torch.isfinite(enc).all()) and float(enc.abs().sum()) > 0
    assert bool(torch.isfinite(dec).all()) and float(dec.abs().sum()) > 0


def test_training_reduces_the_loss():
    protos = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]])
    x = protos[torch.arange(60) % 3]  # three images: the optimum -ELBO is log 3 = 1.10
    cfg = VAETrainConfig(estimator="redge_exact", knobs=default_knobs("redge_exact"),
                      batch_size=30, lr=2e-2)
    state = train_init(TINY, cfg, 0)
    before = float(enumerate_neg_elbo(state.model, protos).mean())
    fit(state, x, cfg, 200)
    after = float(enumerate_neg_elbo(state.model, protos).mean())
    assert before > 2.5 and after < before - 0.6, (before, after)
    assert len(state.history) == 200 and state.step == 200


def _same_state(a, b):
    for (na, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), na
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for k in sa["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][k][key], sb["state"][k][key])
    assert a.step == b.step and a.history == b.history and a.baseline == b.baseline
    ca, cb = a.knobs.get("control"), b.knobs.get("control")
    assert (ca is None) == (cb is None)
    if ca is not None:  # RELAX: its control variate resumes too
        assert ca.step == cb.step == a.step
        for pa, pb in zip(ca.net.parameters(), cb.net.parameters()):
            assert torch.equal(pa, pb)
        assert torch.equal(ca.eta, cb.eta)


def test_relax_trains_its_control_variate_across_steps():
    """RELAX gets one control variate per run (not a fresh one per step, which is REBAR):
    it takes one training step per VAE step and moves away from its zero start."""
    cfg = VAETrainConfig(estimator="relax", knobs=default_knobs("relax"), batch_size=8)
    state = fit(train_init(TINY, cfg, 0), torch.rand(40, 4).round(), cfg, 6)
    control = state.knobs["control"]
    assert control.step == 6
    assert float(control.net.net[-1].weight.abs().sum()) > 0  # the last layer starts at zero


@pytest.mark.parametrize("name", ["reinforce", "redge", "relax"])
def test_resume_after_interrupt_is_identical(tmp_path, name):
    data = torch.rand(40, 4)  # intensities: dynamic binarization draws from the RNG too
    cfg = VAETrainConfig(estimator=name, knobs=default_knobs(name), batch_size=8,
                      dynamic_binarization=True)
    k, j, every = 12, 7, 5
    straight = fit(train_init(TINY, cfg, 0), data, cfg, k, tmp_path / "a.pt", every)

    def interrupt(state):
        if state.step == j:
            raise KeyboardInterrupt

    path = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(train_init(TINY, cfg, 0), data, cfg, k, path, every, callback=interrupt)
    assert load_checkpoint(path)["step"] == j  # saved at the interrupt, between checkpoints
    torch.manual_seed(1234)  # unrelated draws in between must not matter
    torch.rand(100)
    resumed = fit(train_init(TINY, cfg, 0), data, cfg, k, path, every)
    _same_state(straight, resumed)
    assert load_checkpoint(path)["step"] == k
    # the final checkpoint restores the same state into a fresh model
    again = fit(train_init(TINY, cfg, 5), data, cfg, k, path, every)
    _same_state(straight, again)


def test_sigint_stops_at_a_step_boundary_and_resumes(tmp_path):
    data = _tiny_data(n=30, seed=4)
    cfg = VAETrainConfig(estimator="gumbel_soft", knobs=default_knobs("gumbel_soft"),
                      batch_size=8)
    straight = fit(train_init(TINY, cfg, 0), data, cfg, 9, None)

    def ctrl_c(state):
        if state.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # deferred: the step completes, then saves

    path = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(train_init(TINY, cfg, 0), data, cfg, 9, path, every=100, callback=ctrl_c)
    assert load_checkpoint(path)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = fit(train_init(TINY, cfg, 0), data, cfg, 9, path, every=100)
    _same_state(straight, resumed)


def test_train_step_records_history_and_baseline():
    cfg = VAETrainConfig(estimator="reinforce", batch_size=4, baseline_decay=0.5)
    state = train_init(TINY, cfg, 0)
    x = _tiny_data(n=4)
    state, info = train_step(state, x, cfg)
    assert isinstance(state, VAETrainState) and set(info) == {"loss"}
    assert state.step == 1 and state.history == [info["loss"]] and state.baseline is not None
    b1 = state.baseline
    state, _ = train_step(state, x, cfg)
    assert state.baseline != b1


def test_save_and_load_train_state_round_trip(tmp_path):
    cfg = VAETrainConfig(estimator="reinforce", batch_size=4)
    state = train_init(TINY, cfg, 0)
    for _ in range(3):
        state, _ = train_step(state, _tiny_data(n=4), cfg)
    path = save_train_state(tmp_path / "vae.pt", state, note="x")
    fresh = train_init(TINY, cfg, 9)
    got = load_train_state(path, fresh)
    assert got is not None and got["note"] == "x"
    _same_state(state, fresh)
    assert load_train_state(tmp_path / "missing.pt", fresh) is None


def test_optimizer_factory_is_used():
    state = train_init(TINY, VAETrainConfig(), 0,
                       optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert isinstance(state.optimizer, torch.optim.SGD)


@pytest.mark.parametrize("name", ["vimco", "redge", "gumbel_hard"])
def test_iwae_objective_trains_and_its_value_is_the_bound(name):
    model, x = _tiny_model(), _tiny_data()
    cfg = VAETrainConfig(estimator=name, knobs=default_knobs(name), n_samples=4,
                         objective="iwae")
    loss, bounds = training_loss(model, x, cfg)
    assert bounds.shape == (len(x),) and torch.isfinite(bounds).all()
    if name != "redge":  # hard one-hot samples: the value is the bound at those samples
        torch.testing.assert_close(loss.detach(), -bounds.mean())
    loss.backward()
    enc, dec = model.encoder[0].weight.grad, model.decoder[-1].weight.grad
    assert float(enc.abs().sum()) > 0 and float(dec.abs().sum()) > 0
    # E[S-sample bound] lies between the ELBO and log p(x) (enumerated): here on average
    # over many draws of the bound, within 5 standard errors
    with torch.no_grad():
        vals = torch.stack([training_loss(model, x, cfg)[1] for _ in range(200)])
    lo = -enumerate_neg_elbo(model, x)
    hi = enumerate_log_px(model, x)
    se = vals.std(0) / math.sqrt(len(vals))
    assert (vals.mean(0) >= lo - 5 * se).all() and (vals.mean(0) <= hi + 5 * se).all()


def test_iwae_objective_is_checked():
    with pytest.raises(ValueError, match="^objective:"):
        VAETrainConfig(estimator="rloo", n_samples=4, objective="iwae")
    with pytest.raises(ValueError, match="^objective:"):
        VAETrainConfig(estimator="vimco", n_samples=4)
    with pytest.raises(ValueError, match="^n_samples:"):
        VAETrainConfig(estimator="vimco", n_samples=1, objective="iwae")
    with pytest.raises(ValueError, match="^objective:"):
        VAETrainConfig(objective="elbo2")
