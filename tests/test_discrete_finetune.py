"""Reward finetuning of a masked diffusion model (samplegrad.discrete.finetune).

Float64 on a tiny Denoiser (vocabulary 3 + [MASK], length 3, 2-3 unmasking steps):
- the pathwise gradient (unrolled, truncated, adjoint, queue) equals autograd through the
  unrolled sampler written out plainly below, with the same noise, from all-[MASK] starts
  and from clamped (``given``) clue tokens;
- the closed-form path KL equals the KL between the two trajectory laws (enumeration), and
  its Monte Carlo average agrees within 5 standard errors;
- the REINFORCE leave-one-out gradient is unbiased against the exact gradient (enumeration
  of every trajectory, 5 standard errors);
- a few finetuning steps raise the reward; configs and arguments are validated.
"""

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.functional import one_hot

from samplegrad.categorical.relaxed import gumbel_softmax
from samplegrad.discrete import Denoiser, MDMConfig
from samplegrad.discrete import finetune as ft

V, L, MASK, W = 3, 3, 3, 4


def tiny(seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(MDMConfig(V, L, width=8, depth=1, heads=2, mlp_ratio=2)).double()


def perturbed(model: Denoiser, scale: float = 0.3, seed: int = 1) -> Denoiser:
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return ref


WEIGHTS = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.9]],
                       dtype=torch.float64)


def reward(x):  # (N, L, V) one-hot or soft -> (N,); not additive over positions
    return (x * WEIGHTS).sum((-1, -2)) + 1.5 * x[:, 0, 0] * x[:, 2, 2]


def params_of(model):
    return dict(model.named_parameters())


# ---------------------------------------------------------------- plain reference
def plain_loss(model, ref, gumbel, uniforms, tau, hard, lam, truncate=None, start=None):
    """Autograd through the unrolled sampler, written out: Gumbel-softmax draws from the
    noise ``gumbel`` (T, N, L, V), reveals from ``uniforms`` (T, N, L), from ``start`` (N, L)
    tokens (default all [MASK]; others are clamped clues)."""
    t_total, n = uniforms.shape[:2]
    x = one_hot(torch.full((n, L), MASK) if start is None else start, W).double()
    kl_total = torch.zeros(n, dtype=torch.float64)
    for k in range(t_total):
        track = truncate is None or k >= t_total - truncate
        with torch.set_grad_enabled(track):
            logits, ref_logits = model(x), ref(x)
            soft = torch.softmax((logits + gumbel[k]) / tau, -1)
            y = soft
            if hard:
                y = one_hot(soft.argmax(-1), V).double() + soft - soft.detach()
            masked = x[..., MASK] == 1
            p = 1.0 / (t_total - k)
            reveal = masked if k == t_total - 1 else masked & (uniforms[k] < p)
            lq, lp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
            kl = p * ((lq.exp() * (lq - lp)).sum(-1) * masked).sum(-1)
            y_full = torch.cat([y, torch.zeros(n, L, 1, dtype=torch.float64)], -1)
            x = torch.where(reveal[..., None], y_full, x)
        kl_total = kl_total + (kl if track else kl.detach())
    return -(reward(x[..., :V]) - lam * kl_total).mean()


def grads_of(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


def assert_grads_close(got, want):
    for g, w in zip(got, want):
        w = torch.zeros_like(g) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("truncate", [None, 1, 2])
def test_pathwise_gradient_equals_autograd_through_the_plain_sampler(hard, truncate):
    model, t_total, n, tau, lam = tiny(), 3, 5, 0.7, 0.3
    ref = perturbed(model)
    gen = torch.Generator().manual_seed(3)
    gumbel = -torch.log(-torch.log(torch.rand(t_total, n, L, V, generator=gen,
                                              dtype=torch.float64)))
    uniforms = torch.rand(t_total, n, L, generator=gen, dtype=torch.float64)
    want = grads_of(plain_loss(model, ref, gumbel, uniforms, tau, hard, lam, truncate), model)

    def draw(logits, k):  # the registry's estimator, fed the same noise
        return gumbel_softmax(logits, tau, hard, noise=gumbel[k])

    start = torch.full((n, L), MASK)
    ref_params = {k: p.detach() for k, p in ref.named_parameters()}
    loss, info = ft.unrolled_loss(model, params_of(model), ref_params, start, uniforms,
                                  reward, draw, kl_weight=lam, truncate=truncate)
    assert_grads_close(grads_of(loss, model), want)
    assert info["path"].shape == (t_total + 1, n, L, W) and info["kl"] > 0
    # the adjoint along the stored path, one step's graph at a time: the same gradient
    grads, _ = ft.adjoint_grad(model, params_of(model), ref_params, info["path"], reward,
                               draw, kl_weight=lam, truncate=truncate)
    assert_grads_close(list(grads.values()), want)


CLUES = torch.tensor([[MASK, 2, MASK], [0, MASK, MASK], [MASK, MASK, MASK], [1, MASK, 0],
                      [MASK, MASK, 2]])


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("truncate", [None, 2])
def test_pathwise_gradient_with_clues_equals_autograd_through_the_plain_sampler(hard, truncate):
    """The clue-conditioned (``given``) path: clamped tokens are fed to every model call and
    never drawn; unrolled and adjoint gradients equal the plain sampler's in float64."""
    model, t_total, n, tau, lam = tiny(2), 3, len(CLUES), 0.6, 0.4
    ref = perturbed(model, seed=4)
    gen = torch.Generator().manual_seed(7)
    gumbel = -torch.log(-torch.log(torch.rand(t_total, n, L, V, generator=gen,
                                              dtype=torch.float64)))
    uniforms = torch.rand(t_total, n, L, generator=gen, dtype=torch.float64)
    want = grads_of(plain_loss(model, ref, gumbel, uniforms, tau, hard, lam, truncate,
                               start=CLUES), model)
    assert any(w is not None and bool(w.abs().sum() > 0) for w in want)

    def draw(logits, k):
        return gumbel_softmax(logits, tau, hard, noise=gumbel[k])

    ref_params = {k: p.detach() for k, p in ref.named_parameters()}
    start = ft.unrolled_init(model, ft.MDMFinetuneConfig(n_steps=t_total, pop_size=n),
                             given=CLUES).start  # the states' own clamped starts
    assert torch.equal(start, CLUES)
    loss, info = ft.unrolled_loss(model, params_of(model), ref_params, start, uniforms,
                                  reward, draw, kl_weight=lam, truncate=truncate)
    assert_grads_close(grads_of(loss, model), want)
    clamped = CLUES != MASK
    assert torch.equal(info["path"][-1].argmax(-1)[clamped], CLUES[clamped])
    grads, _ = ft.adjoint_grad(model, params_of(model), ref_params, info["path"], reward,
                               draw, kl_weight=lam, truncate=truncate)
    assert_grads_close(list(grads.values()), want)


def test_pool_starts_are_drawn_from_the_pool_every_step():
    """``pool=``: each theta step (queue: each restart) starts from rows of the pool, clues
    clamped; ``given`` and ``pool`` together are refused."""
    model = tiny()
    cfg = ft.MDMFinetuneConfig(n_steps=2, pop_size=6, estimator="straight_through", lr=0.01)
    pool = CLUES[[0, 1, 3]]
    rows = {tuple(r) for r in pool.tolist()}
    for init, step in ((ft.unrolled_init, ft.unrolled_step), (ft.finetune_init, ft.finetune_step),
                       (ft.reinforce_init, ft.reinforce_step)):
        seen = []

        def recording(x, seen=seen):
            seen.append(x.detach())
            return reward(x)

        state = init(model, cfg, pool=pool)
        starts = []
        for _ in range(4):
            state, _ = step(state, model, recording, cfg)
            starts.append(state.paths[:, 0].argmax(-1) if init is ft.finetune_init
                          else state.start)  # (queue: the starts of all T populations)
        drawn = {tuple(r) for r in torch.cat(starts).reshape(-1, L).tolist()}
        assert drawn <= rows and len(drawn) > 1  # pool rows, not one fixed start
        x = torch.cat(seen).argmax(-1)  # every finished sequence keeps some pool row's clues
        agree = torch.stack([((r == MASK) | (x == r)).all(-1) for r in pool]).any(0)
        assert bool(agree.all())
    with pytest.raises(ValueError, match="pool"):
        ft.unrolled_init(model, cfg, given=CLUES[0], pool=pool)
    with pytest.raises(ValueError, match="pool"):
        ft.unrolled_init(model, cfg, pool=torch.tensor([[0, 5, MASK]]))


def test_queue_gradient_is_the_unrolled_gradient_on_its_path():
    """Before any optimizer step the finished population's path was drawn with the current
    theta; its gradient (redge draws, re-seeded per step) equals unrolled autograd through a
    replay of that path (same reveals, same seeded draws)."""
    model, t_total, n = tiny(), 3, 4
    cfg = ft.MDMFinetuneConfig(n_steps=t_total, pop_size=n, estimator="redge", kl_weight=0.2,
                               seed=5)
    state = ft.finetune_init(model, cfg, optimizer=lambda ps: torch.optim.SGD(ps, lr=1.0))
    slot = t_total - 1  # the population finished by the first step
    path = state.paths[slot].clone()
    masked = path[..., MASK] > 0.5
    revealed = masked[:-1] & ~masked[1:]  # (the unfilled last state reads as unmasked)
    uniforms = torch.where(revealed, 0.0, 1.0).double()  # replays the stored reveals
    draw = ft._seeded_draw(cfg, state.seeds[slot], torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    params = params_of(model)
    loss, _ = ft.unrolled_loss(model, params, state.ref_params, state.start, uniforms, reward,
                               draw, kl_weight=cfg.kl_weight)
    want = grads_of(loss, model)
    state, info = ft.finetune_step(state, model, reward, cfg)
    assert info["finished_slot"] == slot and int(state.stage[slot]) == 0
    got = [b - p.detach() for b, p in zip(before, model.parameters())]  # SGD, lr 1: -grad
    assert_grads_close(got, want)


# ---------------------------------------------------------------- enumeration
def trajectories(t_total):
    """Every trajectory of the sampler from all-[MASK]: lists of integer states x_0..x_T
    with the probability of its reveal decisions."""
    out = []

    def rec(k, states, prob):
        x = states[-1]
        if k == t_total:
            out.append((states, prob))
            return
        masked = [i for i in range(L) if x[i] == MASK]
        p = 1.0 / (t_total - k)
        for r in itertools.product([0, 1], repeat=len(masked)):
            if k == t_total - 1 and not all(r):
                continue
            pr = 1.0 if k == t_total - 1 else math.prod(p if b else 1 - p for b in r)
            if pr == 0.0:
                continue
            chosen = [i for i, b in zip(masked, r) if b]
            for toks in itertools.product(range(V), repeat=len(chosen)):
                y = list(x)
                for i, t in zip(chosen, toks):
                    y[i] = t
                rec(k + 1, states + [tuple(y)], prob * pr)

    rec(0, [tuple([MASK] * L)], 1.0)
    return out


def enumerate_objective(model, ref, t_total, lam):
    """Exact J = E[R(x_T) - lam * sum_k kl_k], exact E[sum_k kl_k] and the trajectory-law KL."""
    trajs = trajectories(t_total)
    uniq = sorted({s for states, _ in trajs for s in states[:-1]})
    index = {s: i for i, s in enumerate(uniq)}
    lq = torch.log_softmax(model(torch.tensor(uniq)), -1)
    with torch.no_grad():
        lp = torch.log_softmax(ref(torch.tensor(uniq)), -1)
    j = kl_expected = kl_law = 0.0
    for states, pr in trajs:
        logq = logp = kl_sum = 0.0
        for k in range(t_total):
            x, y = states[k], states[k + 1]
            row = index[x]
            p = 1.0 / (t_total - k)
            step_kl = (lq[row].exp() * (lq[row] - lp[row])).sum(-1)
            kl_sum = kl_sum + p * sum(step_kl[i] for i in range(L) if x[i] == MASK)
            for i in range(L):
                if x[i] == MASK and y[i] != MASK:
                    logq = logq + lq[row, i, y[i]]
                    logp = logp + lp[row, i, y[i]]
        prob = pr * torch.exp(logq)
        xt = one_hot(torch.tensor([states[-1]]), V).double()
        j = j + prob * (reward(xt)[0] - lam * kl_sum)
        kl_expected = kl_expected + prob * kl_sum
        kl_law = kl_law + prob * (logq - logp)
    return j, kl_expected, kl_law


def test_path_kl_matches_enumeration_and_monte_carlo():
    model, t_total = tiny(), 2
    ref = perturbed(model, 0.5)
    with torch.no_grad():
        _, kl_expected, kl_law = enumerate_objective(model, ref, t_total, 0.0)
    assert float(kl_law) > 0.01
    torch.testing.assert_close(kl_expected, kl_law, rtol=1e-10, atol=1e-12)
    n = 4000
    gen = torch.Generator().manual_seed(0)
    params = params_of(model)
    ref_params = {k: p.detach() for k, p in ref.named_parameters()}
    path = ft.sample_path(model, params, torch.full((n, L), MASK), t_total, gen)
    kl = ft.path_kl(model, params, ref_params, path)
    se = float(kl.std()) / n ** 0.5
    assert abs(float(kl.mean()) - float(kl_law)) < 5 * se, (float(kl.mean()), float(kl_law), se)


def test_reinforce_loo_gradient_is_unbiased():
    model, t_total, lam = tiny(2), 2, 0.5
    ref = perturbed(model, 0.4)
    j, _, _ = enumerate_objective(model, ref, t_total, lam)
    exact = [torch.zeros_like(p) if g is None else -g for p, g in
             zip(model.parameters(), grads_of(j, model))]  # gradient of the loss -J
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()]
    params = params_of(model)
    names = list(params)
    ref_params = {k: p.detach() for k, p in ref.named_parameters()}
    reps, n = 50, 48
    est = torch.zeros(reps, 4, dtype=torch.float64)  # 4 scalar projections per repeat
    head_b = names.index("head.bias")
    for r in range(reps):
        path = ft.sample_path(model, params, torch.full((n, L), MASK), t_total, gen)
        grads, _ = ft.reinforce_grad(model, params, ref_params, path, reward, kl_weight=lam)
        g = list(grads.values())
        est[r, :3] = g[head_b]
        est[r, 3] = sum((gi * d).sum() for gi, d in zip(g, direction))
    want = torch.stack([*exact[head_b], sum((gi * d).sum() for gi, d in zip(exact, direction))])
    mean, se = est.mean(0), est.std(0) / reps ** 0.5
    assert bool((want.abs() > 1e-3).all())
    assert bool(((mean - want).abs() < 5 * se).all()), (mean, want, se)


# ---------------------------------------------------------------- training
def held_out_reward(model, n=2000, seed=9):
    gen = torch.Generator().manual_seed(seed)
    path = ft.sample_path(model, params_of(model), torch.full((n, L), MASK), 3, gen)
    return float(reward(path[-1][..., :V]).mean())


@pytest.mark.parametrize("method", ["unrolled", "truncated", "queue", "reinforce"])
def test_finetuning_raises_the_reward(method):
    model = tiny()
    before = held_out_reward(model)
    cfg = ft.MDMFinetuneConfig(n_steps=3, pop_size=16, estimator="gumbel_soft", lr=0.02,
                               kl_weight=0.01, truncate=1 if method == "truncated" else None)
    init, step = {"unrolled": (ft.unrolled_init, ft.unrolled_step),
                  "truncated": (ft.unrolled_init, ft.unrolled_step),
                  "queue": (ft.finetune_init, ft.finetune_step),
                  "reinforce": (ft.reinforce_init, ft.reinforce_step)}[method]
    state = init(model, cfg)
    for _ in range(25):
        state, info = step(state, model, reward, cfg)
        assert set(info) >= {"reward", "kl", "grad_norm"} and math.isfinite(info["grad_norm"])
    after = held_out_reward(model)
    # 2000 held-out sequences: the standard error of each mean is below 0.03
    assert after > before + 0.3, (before, after)


# ---------------------------------------------------------------- validation
FIELDS = {"n_steps": [0, -1, 1.5, True], "pop_size": [0, "4"], "estimator": ["rloo", "exact",
          "nope"], "knobs": [[1], {"nope": 1}], "truncate": [0, 4, 2.0],
          "kl_weight": [-1.0, math.nan, math.inf], "lr": [0.0, -1e-3, math.nan],
          "optimizer": ["Optimizer", "adam"], "grad_clip": [0.0, -1.0], "seed": [1.5, None]}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_config_errors_name_the_field(data):
    name = data.draw(st.sampled_from(sorted(FIELDS)))
    bad = data.draw(st.sampled_from(FIELDS[name]))
    kwargs = {"n_steps": 3, name: bad}
    with pytest.raises(ValueError, match=name):
        ft.MDMFinetuneConfig(**kwargs)


@settings(max_examples=30, deadline=None)
@given(n_steps=st.integers(1, 50), truncate=st.one_of(st.none(), st.integers(1, 50)),
       estimator=st.sampled_from(["redge", "straight_through", "gumbel_soft", "reinmax"]))
def test_valid_configs_are_accepted(n_steps, truncate, estimator):
    if truncate is not None and truncate > n_steps:
        with pytest.raises(ValueError, match="truncate"):
            ft.MDMFinetuneConfig(n_steps=n_steps, truncate=truncate, estimator=estimator)
    else:
        cfg = ft.MDMFinetuneConfig(n_steps=n_steps, truncate=truncate, estimator=estimator)
        assert cfg.truncate == truncate


def test_bad_arguments_name_them():
    model, cfg = tiny(), ft.MDMFinetuneConfig(n_steps=2, pop_size=2)
    with pytest.raises(TypeError, match="cfg"):
        ft.unrolled_init(model, "cfg")
    with pytest.raises(ValueError, match="pop_size"):
        ft.reinforce_init(model, ft.MDMFinetuneConfig(pop_size=1))

    class IdsOnly(torch.nn.Module):  # breaks the contract: no float one-hot inputs
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(W, V)

        def forward(self, x):
            return self.emb(x)

    with pytest.raises(ValueError, match="model: must accept float one-hot"):
        ft.unrolled_init(IdsOnly(), cfg, mask_id=MASK, vocab=V, seq_len=L)
    state = ft.unrolled_init(model, cfg)
    with pytest.raises(ValueError, match="reward_fn"):
        ft.unrolled_step(state, model, lambda x: x.sum(), cfg)
    with pytest.raises(ValueError, match="reward_fn: its output does not depend"):
        ft.unrolled_step(state, model, lambda x: x.detach().sum((-1, -2)), cfg)
    with pytest.raises(TypeError, match="state"):
        ft.finetune_step(state, model, reward, cfg)
    q = ft.finetune_init(model, cfg)
    stage = q.stage.clone()
    with pytest.raises(ValueError, match="reward_fn"):
        ft.finetune_step(q, model, lambda x: x.sum(), cfg)
    assert torch.equal(q.stage, stage)  # a failed step leaves the queue as it was
    with pytest.raises(ValueError, match="given"):
        ft.unrolled_init(model, cfg, given=torch.tensor([0, 1]))


def test_given_tokens_stay_clamped_in_every_method():
    model = tiny()
    given = torch.tensor([MASK, 2, MASK])
    cfg = ft.MDMFinetuneConfig(n_steps=2, pop_size=4, estimator="straight_through", lr=0.01)
    for init, step in ((ft.unrolled_init, ft.unrolled_step), (ft.finetune_init, ft.finetune_step),
                       (ft.reinforce_init, ft.reinforce_step)):
        seen = []

        def recording(x, seen=seen):
            seen.append(x.detach())
            return reward(x)

        state = init(model, cfg, given=given)
        for _ in range(2):
            state, _ = step(state, model, recording, cfg)
        x = torch.cat(seen)
        assert bool((x[:, 1].argmax(-1) == 2).all())  # the clue, in every finished sequence
        assert bool((x.sum(-1) == 1).all())  # hard draws: one-hot, nothing left masked
