"""One protocol: every loop is ``init(...) -> state`` and ``step(state, ...) -> (state, info)``
with ``info`` a dict of plain numbers; one optimizer convention (torch.optim)."""

from __future__ import annotations

import numbers

import pytest
import torch

from samplegrad import discrete
from samplegrad.diffusion import EpsMLP, linear_alpha_bars, sampling_schedule
from samplegrad.implicit import finetune, langevin, langevin_baselines
from samplegrad_bench.tasks import vae


def _check(state, out, keys):
    assert isinstance(out, tuple) and len(out) == 2
    new, info = out
    assert type(new) is type(state)
    assert isinstance(info, dict) and set(keys) <= set(info)
    assert all(isinstance(v, numbers.Number) for v in info.values()), info
    return new


def _gauss(x, theta):  # V(x, theta) = |x - theta|^2 / 2
    return 0.5 * (x - theta).pow(2).sum(-1)


def _reward(x):
    return -x.pow(2).sum(-1)


def test_langevin_and_its_baselines():
    cfg = langevin_baselines.BaselineConfig(step_size=0.1, lr=0.1, n_particles=16, n_inner=2)
    state = langevin.init(_gauss, torch.zeros(2), cfg, shape=2)
    assert isinstance(state.optimizer, torch.optim.SGD)
    state = _check(state, langevin.step(state, _gauss, _reward, cfg), ["reward", "grad_norm"])
    state = _check(state, langevin_baselines.unrolled_step(state, _gauss, _reward, cfg),
                   ["reward", "grad_norm"])
    state = _check(state, langevin_baselines.nested_step(state, _gauss, _reward, cfg),
                   ["reward", "grad_norm"])
    assert state.step == 3


def test_finetune_queue_and_unrolled_baseline():
    torch.manual_seed(0)
    model = EpsMLP(dim=3, hidden=8, n_blocks=1, temb_dim=4)
    sched = sampling_schedule(linear_alpha_bars(50), n_steps=3)
    cfg = finetune.FinetuneConfig(pop_size=4, lr=1e-3, kl_weight=0.1)
    state = finetune.finetune_init(model, sched, cfg, shape=3)
    assert isinstance(state.optimizer, torch.optim.Adam)
    state = _check(state, finetune.finetune_step(state, model, sched, _reward, cfg),
                   ["reward", "kl", "grad_norm", "finished_slot"])
    ustate = finetune.unrolled_init(model, cfg, shape=3)
    _check(ustate, finetune.unrolled_step(ustate, model, sched, _reward, cfg),
           ["reward", "kl", "grad_norm"])


def test_masked_diffusion_training():
    mcfg = discrete.MDMConfig(vocab_size=3, seq_len=4, width=8, depth=1, heads=2)
    tcfg = discrete.MDMTrainConfig(steps=2, batch_size=4, warmup=1)
    state = discrete.train_init(mcfg, tcfg, seed=0)
    assert isinstance(state.optimizer, torch.optim.AdamW)
    data = torch.randint(0, 3, (10, 4))
    _check(state, discrete.train_step(state, data, tcfg), ["loss", "lr"])


def test_vae_training():
    vcfg = vae.VAEConfig(n_pixels=4, n_latent=2, n_classes=3, hidden=(8,))
    tcfg = vae.VAETrainConfig(batch_size=4)
    state = vae.train_init(vcfg, tcfg, seed=0)
    _check(state, vae.train_step(state, torch.rand(4, 4).round(), tcfg), ["loss"])


@pytest.mark.parametrize(("module", "gone"), [
    (finetune, ["AdamState", "adam_init", "adam_update"]),
    (discrete, ["TrainConfig", "TrainState", "save_checkpoint", "load_checkpoint"]),
    (vae, ["TrainConfig", "TrainState", "init_train", "save_state", "load_state"]),
])
def test_old_names_are_gone(module, gone):
    for name in gone:
        assert not hasattr(module, name), name
