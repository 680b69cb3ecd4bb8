"""The diffusers adapter: a tiny ``UNet2DModel`` with ``DDPMScheduler``/``DDIMScheduler``
schedules, finetuned by the queue (adjoint) and by the unrolled baseline; the adjoint gradient
equals autograd through the unrolled sampler; our ancestral step is diffusers' DDPM step."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from samplegrad.diffusion import ddpm_step, draw_noise, sample_path  # noqa: E402
from samplegrad.diffusion.diffusers_adapter import (  # noqa: E402
    DiffusersEps,
    from_diffusers,
    schedule_from_diffusers,
)
from samplegrad.implicit import finetune  # noqa: E402

DT = torch.float64


def tiny_unet(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D")).to(dtype)


def reward(x: torch.Tensor) -> torch.Tensor:  # (N, 1, 8, 8) -> (N,): bright left half
    return x[..., :4].mean((1, 2, 3)) - 0.1 * x.pow(2).mean((1, 2, 3))


def test_model_and_schedule_from_diffusers():
    sch = diffusers.DDPMScheduler(num_train_timesteps=100)
    model, sched = from_diffusers(tiny_unet(), sch, n_steps=5)
    assert isinstance(model, DiffusersEps) and model.shape == (1, 8, 8)
    assert sched.timesteps.tolist() == [0, 20, 40, 60, 80]
    assert sch.timesteps.numel() == 100  # the user's scheduler is not modified
    torch.testing.assert_close(sched.alpha_bar.double(), sch.alphas_cumprod[::20].double())
    x = torch.randn(3, 1, 8, 8)
    assert model(x, torch.tensor([0, 50, 99])).shape == x.shape
    ddim = diffusers.DDIMScheduler(num_train_timesteps=100, steps_offset=1)
    s2 = schedule_from_diffusers(ddim, 4, DT)
    assert s2.timesteps.tolist() == [1, 26, 51, 76] and s2.sigma.dtype == DT
    assert bool((s2.sigma > 0).all())  # always the stochastic ancestral sampler


def test_ancestral_step_equals_diffusers_ddpm_step():
    sch = diffusers.DDPMScheduler(num_train_timesteps=100, clip_sample=False,
                                  variance_type="fixed_small")
    sched = schedule_from_diffusers(sch, 10, DT)
    ref = diffusers.DDPMScheduler.from_config(sch.config)
    ref.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=DT)
    eps = torch.randn(4, 1, 8, 8, generator=g, dtype=DT)
    for j in range(1, 10):  # j = 0 differs by design: diffusers' last step has no noise
        t = int(sched.timesteps[j])
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(j), dtype=DT)
        theirs = ref.step(eps, t, x, generator=torch.Generator().manual_seed(j)).prev_sample
        ours = ddpm_step(lambda x_, t_: eps, x, j, sched, z)
        torch.testing.assert_close(ours, theirs.to(DT), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kl_weight", [0.0, 0.5])
def test_adjoint_gradient_equals_unrolled_autograd_on_a_unet(kl_weight):
    unet = tiny_unet(dtype=DT)
    model, sched = from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=100), 3)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    ref = {k: v.detach() + 0.01 * torch.randn(v.shape, generator=g, dtype=DT)
           for k, v in params.items()}
    noise = draw_noise(sched, 2, model.shape, torch.Generator().manual_seed(2), DT)
    loss, info_u = finetune.unrolled_loss(model, params, ref, noise, sched, reward, kl_weight)
    g_auto = torch.autograd.grad(loss, list(params.values()))
    with torch.no_grad():
        path = sample_path(lambda x, t: torch.func.functional_call(model, params, (x, t)),
                           noise, sched)
    g_adj, info_a = finetune.adjoint_grad(model, params, ref, path, sched, reward, kl_weight)
    scale = max(float(gu.abs().max()) for gu in g_auto)
    for (name, ga), gu in zip(g_adj.items(), g_auto):
        torch.testing.assert_close(ga, gu, rtol=1e-6, atol=1e-9 * scale, msg=name)
    assert info_a["reward"] == pytest.approx(info_u["reward"], rel=1e-9)
    assert info_a["kl"] == pytest.approx(info_u["kl"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("method", ["implicit", "unrolled"])
def test_finetune_a_tiny_unet_a_few_steps(method):
    unet = tiny_unet()
    model, sched = from_diffusers(unet, diffusers.DDIMScheduler(num_train_timesteps=100), 3)
    cfg = finetune.FinetuneConfig(pop_size=4, lr=1e-3, kl_weight=0.1, seed=0)
    before = {k: v.detach().clone() for k, v in unet.named_parameters()}
    opt = lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0)  # noqa: E731
    if method == "implicit":
        state = finetune.finetune_init(model, sched, cfg, model.shape, optimizer=opt)
        step = lambda s: finetune.finetune_step(s, model, sched, reward, cfg)  # noqa: E731
    else:
        state = finetune.unrolled_init(model, cfg, model.shape, optimizer=opt)
        step = lambda s: finetune.unrolled_step(s, model, sched, reward, cfg)  # noqa: E731
    for _ in range(3):
        state, info = step(state)
        assert all(torch.isfinite(torch.tensor(v)) for v in info.values())
    assert isinstance(state.optimizer, torch.optim.AdamW) and state.iteration == 3
    changed = [k for k, v in unet.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert len(changed) == len(before)  # the UNet itself was trained, in place


def test_only_the_chosen_unet_layers_train():
    unet = tiny_unet()
    model, sched = from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=100), 2)
    cfg = finetune.FinetuneConfig(pop_size=2, lr=1e-2, kl_weight=0.1)
    before = {k: v.detach().clone() for k, v in unet.named_parameters()}
    state = finetune.finetune_init(model, sched, cfg, model.shape,
                                   params=unet.conv_out.parameters())
    for _ in range(2):
        state, _ = finetune.finetune_step(state, model, sched, reward, cfg)
    changed = {k for k, v in unet.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed == {"conv_out.weight", "conv_out.bias"}
    assert set(state.ref_params) == {"unet.conv_out.weight", "unet.conv_out.bias"}


def test_adapter_rejects_what_it_cannot_use():
    v = diffusers.DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="^scheduler: prediction_type"):
        schedule_from_diffusers(v, 4)
    with pytest.raises(TypeError, match="^scheduler:"):
        schedule_from_diffusers(object(), 4)
    with pytest.raises(ValueError, match="^n_steps:"):
        schedule_from_diffusers(diffusers.DDPMScheduler(num_train_timesteps=100), 0)
    with pytest.raises(TypeError, match="^unet:"):
        DiffusersEps(lambda x, t: x)
    model, sched = from_diffusers(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=50), 2)
    with pytest.raises(ValueError, match=r"^shape: the model failed .*\(1, 7, 7\)"):
        finetune.finetune_init(model, sched, finetune.FinetuneConfig(pop_size=2), (1, 7, 7))
