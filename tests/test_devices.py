"""Every subsystem here (diffusion, implicit finetuning and Langevin, masked discrete diffusion)
follows its inputs' device and dtype: nothing is created on the CPU implicitly.

How this is checked without a GPU (CI has none):

1. **Default device "meta".** The inputs (models, schedules, particles, tokens, generators)
   are built on the CPU, then each subsystem runs inside ``with torch.device("meta"):``.
   Every tensor the library creates *without* an explicit ``device=`` then lands on the meta
   device, where it has no data: mixing it with the CPU inputs raises ("Tensor on device meta
   is not on the expected device cpu"), and reading it (``.item()``) fails. So a missing
   ``device=`` fails these tests on the CPU exactly where it would fail (or silently copy) on
   a GPU. The outputs are also checked to be on the CPU and in the inputs' dtype (float64
   inputs stay float64).
2. **A static scan** of the subsystems' source: every ``torch.<factory>(...)`` call
   (``randn``, ``zeros``, ``arange``, ``tensor``, ``Generator``, ...) passes ``device=``
   (``device=None`` marks a deliberate "torch's default device", e.g. for a Python list).
   This catches ``torch.Generator()`` too, which the default device does not affect.
3. **CUDA tests** (``pytest.mark.cuda``, skipped without a GPU) run every subsystem on
   ``cuda`` and check where the results live.

Constructing ``nn.Module`` s follows torch's default device, as torch's own layers do, so
models are built before entering the meta context.
"""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import pytest
import torch
from torch import nn

from samplegrad import discrete
from samplegrad.diffusion import (
    EpsMLP,
    alpha_bars_from_betas,
    ddpm_loss,
    draw_noise,
    linear_alpha_bars,
    sample,
    sample_path,
    sampling_schedule,
)
from samplegrad.implicit import finetune, langevin, langevin_baselines

ROOT = Path(__file__).resolve().parents[1]
SUBSYSTEMS = ("diffusion", "implicit", "discrete", "spectral", "categorical")
FACTORIES = {"randn", "rand", "randint", "randn_like", "zeros", "ones", "full", "empty",
             "arange", "linspace", "logspace", "tensor", "as_tensor", "eye", "randperm",
             "normal", "Generator", "scalar_tensor", "sparse_csr_tensor", "sparse_coo_tensor"}
DT = torch.float64


@contextlib.contextmanager
def implicit_tensors_on_meta():
    """Tensors created without ``device=`` go to the data-less meta device."""
    with torch.device("meta"):
        yield


def cpu_gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


# ----------------------------------------------------------------------------- static scan
def _factory_calls_without_device() -> list[str]:
    bad = []
    for sub in SUBSYSTEMS:
        for path in sorted((ROOT / "src" / "samplegrad" / sub).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in FACTORIES
                        and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "torch"
                        and "device" not in {k.arg for k in node.keywords}):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} torch.{node.func.attr}")
    return bad


def test_every_factory_call_names_its_device():
    assert _factory_calls_without_device() == []


def test_the_scan_would_see_a_missing_device(tmp_path, monkeypatch):
    src = tmp_path / "src" / "samplegrad" / "diffusion"
    src.mkdir(parents=True)
    (src / "x.py").write_text("import torch\nz = torch.zeros(3)\ng = torch.Generator()\n"
                              "ok = torch.zeros(3, device='cpu')\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _factory_calls_without_device() == ["src/samplegrad/diffusion/x.py:2 torch.zeros",
                                               "src/samplegrad/diffusion/x.py:3 torch.Generator"]


def test_the_meta_trick_catches_an_implicit_tensor():
    x = torch.ones(3, device="cpu")
    with implicit_tensors_on_meta(), pytest.raises(RuntimeError):
        _ = x + torch.zeros(3)  # created without device=: on meta, cannot mix with the CPU
    with implicit_tensors_on_meta():
        _ = x + torch.zeros(3, device=x.device)  # fine


# ----------------------------------------------------------------------------- diffusion
def _eps_model(dim: int = 3) -> nn.Module:
    torch.manual_seed(0)
    m = EpsMLP(dim=dim, hidden=8, n_blocks=1, temb_dim=4).to(DT)
    nn.init.normal_(m.out.weight, std=0.1)
    return m


def test_diffusion_follows_its_inputs():
    m = _eps_model()
    ab = linear_alpha_bars(50, device="cpu")
    betas = torch.linspace(1e-4, 0.02, 50, dtype=DT, device="cpu")
    x0 = torch.rand(4, 3, dtype=DT, device="cpu")
    with implicit_tensors_on_meta():
        s = sampling_schedule(ab, 5, DT)
        s2 = sampling_schedule(alpha_bars_from_betas(betas), 5, DT, timesteps=[0, 9, 20, 30, 49])
        assert s.sigma.device.type == s2.timesteps.device.type == "cpu"
        noise = draw_noise(s, 4, 3, cpu_gen(), DT)
        loss = ddpm_loss(m, x0, ab, cpu_gen())
        loss.backward()
        with torch.no_grad():
            path = sample_path(m, noise, s)
            x = sample(m, noise, s2)
    assert noise.device.type == path.device.type == x.device.type == loss.device.type == "cpu"
    assert noise.dtype == path.dtype == x.dtype == loss.dtype == DT


def test_diffusers_schedule_follows_the_scheduler():
    diffusers = pytest.importorskip("diffusers")
    from samplegrad.diffusion.diffusers_adapter import schedule_from_diffusers

    sch = diffusers.DDIMScheduler(num_train_timesteps=100)
    with implicit_tensors_on_meta():
        s = schedule_from_diffusers(sch, 4, DT)
    assert s.timesteps.device.type == s.sigma.device.type == "cpu" and s.sigma.dtype == DT


# ----------------------------------------------------------------------------- finetuning
def _reward(x: torch.Tensor) -> torch.Tensor:
    return -(x - 0.5).pow(2).flatten(1).sum(-1)


@pytest.mark.parametrize("kl_weight", [0.0, 0.3])
def test_finetuning_follows_the_model(kl_weight):
    m = _eps_model()
    sched = sampling_schedule(linear_alpha_bars(50, device="cpu"), 3)  # float32 on purpose
    cfg = finetune.FinetuneConfig(pop_size=3, lr=1e-3, kl_weight=kl_weight)
    with implicit_tensors_on_meta():
        state = finetune.finetune_init(m, sched, cfg, 3)
        state, info = finetune.finetune_step(state, m, sched, _reward, cfg)
        ustate = finetune.unrolled_init(m, cfg, 3)
        ustate, uinfo = finetune.unrolled_step(ustate, m, sched, _reward, cfg)
    assert state.paths.device.type == "cpu" and state.paths.dtype == DT  # the model's dtype
    assert state.generator.device.type == ustate.generator.device.type == "cpu"
    assert all(v.device.type == "cpu" for v in state.ref_params.values())
    assert all(p.device.type == "cpu" and p.dtype == DT for p in m.parameters())
    assert info["grad_norm"] > 0 and uinfo["grad_norm"] > 0


# ----------------------------------------------------------------------------- Langevin
def _gauss(x, theta):
    return 0.5 * (x - theta).pow(2).flatten(1).sum(-1)


class _ModulePotential(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(2, 2, dtype=DT))

    def forward(self, x):
        return 0.5 * (x - self.mu).pow(2).flatten(1).sum(-1)


def test_langevin_follows_theta_and_particles():
    theta0 = torch.zeros(2, dtype=DT, device="cpu")
    cfg = langevin_baselines.BaselineConfig(step_size=0.1, lr=0.1, n_particles=8, n_ref=8,
                                            kl_weight=0.1, n_inner=2)
    with implicit_tensors_on_meta():
        state = langevin.init(_gauss, theta0, cfg, shape=2, theta_ref=theta0 + 1, seed=0)
        state, _ = langevin.step(state, _gauss, lambda x: x[:, 0], cfg)
        state, _ = langevin_baselines.unrolled_step(state, _gauss, lambda x: x[:, 0], cfg)
        state, _ = langevin_baselines.nested_step(state, _gauss, lambda x: x[:, 0], cfg)
        _, hist = langevin.fit(_gauss, lambda x: x[:, 0], theta0, cfg, 2, shape=2,
                               theta_ref=theta0, log_every=1)
    assert state.x.device.type == state.x_ref.device.type == state.theta.device.type == "cpu"
    assert state.x.dtype == state.theta.dtype == DT
    assert len(hist["kl"]) == 2


def test_langevin_module_potential_and_image_particles():
    pot = _ModulePotential()
    x0 = torch.randn(6, 2, 2, dtype=DT, device="cpu")
    cfg = langevin.LangevinConfig(step_size=0.1, lr=0.1)
    with implicit_tensors_on_meta():
        state = langevin.init(pot, None, cfg, x0=x0)
        state, _ = langevin.step(state, pot, lambda x: x.flatten(1).sum(-1), cfg)
    assert state.x.shape == (6, 2, 2) and state.x.device.type == "cpu"
    assert pot.mu.device.type == "cpu"


# ----------------------------------------------------------------------------- discrete
TINY = discrete.MDMConfig(vocab_size=3, seq_len=5, width=8, depth=1, heads=2, mlp_ratio=2)


def _count_zeros(y):
    return y[..., 0].sum(-1)


def test_masked_diffusion_follows_the_model():
    torch.manual_seed(0)
    model = discrete.Denoiser(TINY, device="cpu")
    tcfg = discrete.MDMTrainConfig(steps=2, batch_size=4, warmup=1)
    state = discrete.train_init(TINY, tcfg, seed=0, device="cpu")
    data = torch.randint(0, 3, (10, 5), device="cpu")
    gcfg = discrete.GuidanceConfig("redge", n_samples=2, n_opt_steps=2)
    given = torch.tensor([3, 1, 3, 3, 3], device="cpu")
    with implicit_tensors_on_meta():
        state, info = discrete.train_step(state, data, tcfg)
        x = discrete.sample(model, 3, batch_size=4, generator=cpu_gen())
        xg, kl = discrete.sample(model, 3, given=given, batch_size=2, return_kl=True,
                                 guide=discrete.make_guide(_count_zeros, gcfg),
                                 generator=cpu_gen())
    assert x.device.type == xg.device.type == kl.device.type == "cpu"
    assert (xg[:, 1] == 1).all() and info["loss"] > 0


def test_any_logits_model_with_its_own_mask_id_follows_its_tokens():
    table = torch.randn(6, 4, dtype=DT, device="cpu")  # vocabulary of 4, mask id 2 inside it

    def logits_model(x):  # (B, L) -> (B, L, 4): a lookup, no parameters
        return table[x]

    given = torch.full((3, 6), 2, device="cpu")
    gcfg = discrete.GuidanceConfig("gumbel_soft", n_samples=2, n_opt_steps=1)
    with implicit_tensors_on_meta():
        x, kl = discrete.sample(logits_model, 4, given=given, mask_id=2, generator=cpu_gen(),
                                guide=discrete.make_guide(_count_zeros, gcfg, mask_id=2),
                                return_kl=True, schedule=lambda t: t ** 2)
    assert x.device.type == "cpu" and not (x == 2).any()


def test_loaders_take_map_location(tmp_path):
    state = discrete.train_init(TINY, discrete.MDMTrainConfig(steps=1), seed=0, device="cpu")
    path = discrete.save_train_state(tmp_path / "m.pt", state, discrete.MDMTrainConfig(steps=1))
    model = discrete.load_model(path, map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert discrete.load_train_state(path, map_location="cpu").generator.device.type == "cpu"


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_diffusion_and_finetuning(dtype):
    m = _eps_model().to("cuda", dtype)
    sched = sampling_schedule(linear_alpha_bars(50), 3)  # the schedule may stay on the CPU
    cfg = finetune.FinetuneConfig(pop_size=3, lr=1e-3, kl_weight=0.1)
    state = finetune.finetune_init(m, sched, cfg, 3)
    state, _ = finetune.finetune_step(state, m, sched, _reward, cfg)
    assert state.paths.is_cuda and state.paths.dtype == dtype
    ustate = finetune.unrolled_init(m, cfg, (3,))
    ustate, info = finetune.unrolled_step(ustate, m, sched, _reward, cfg)
    assert ustate.generator.device.type == "cuda" and info["grad_norm"] > 0
    gen = torch.Generator(device="cuda").manual_seed(0)
    noise = draw_noise(sched, 2, 3, gen, dtype)
    with torch.no_grad():
        assert sample(m, noise, sched).is_cuda
    assert ddpm_loss(m, torch.rand(4, 3, device="cuda", dtype=dtype),
                     linear_alpha_bars(50), gen).is_cuda


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_langevin_and_module_potential():
    cfg = langevin_baselines.BaselineConfig(step_size=0.1, lr=0.1, n_particles=8, n_ref=8,
                                            kl_weight=0.1, n_inner=2)
    theta0 = torch.zeros(2, device="cuda")
    state = langevin.init(_gauss, theta0, cfg, shape=2, theta_ref=theta0 + 1)
    for fn in (langevin.step, langevin_baselines.unrolled_step, langevin_baselines.nested_step):
        state, _ = fn(state, _gauss, lambda x: x[:, 0], cfg)
    assert state.x.is_cuda and state.x_ref.is_cuda and state.generator.device.type == "cuda"
    pot = _ModulePotential().cuda()
    state = langevin.init(pot, None, cfg, shape=(2, 2))
    state, _ = langevin.step(state, pot, lambda x: x.flatten(1).sum(-1), cfg)
    assert state.x.is_cuda and pot.mu.is_cuda


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masked_diffusion_and_guidance(tmp_path):
    tcfg = discrete.MDMTrainConfig(steps=2, batch_size=4, warmup=1)
    state = discrete.train_init(TINY, tcfg, seed=0, device="cuda")
    state, _ = discrete.train_step(state, torch.randint(0, 3, (10, 5)), tcfg)  # data on CPU
    path = discrete.save_train_state(tmp_path / "m.pt", state, tcfg)
    model = discrete.load_model(path, map_location="cuda")
    assert next(model.parameters()).is_cuda
    gen = torch.Generator(device="cuda").manual_seed(0)
    gcfg = discrete.GuidanceConfig("redge", n_samples=2, n_opt_steps=2)
    x, kl = discrete.sample(model, 3, batch_size=4, generator=gen, return_kl=True,
                            guide=discrete.make_guide(_count_zeros, gcfg))
    assert x.is_cuda and kl.is_cuda
    with pytest.raises(ValueError, match="^generator:"):
        discrete.sample(model, 3, batch_size=4, generator=cpu_gen())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_diffusers_unet_finetunes_on_the_gpu():
    diffusers = pytest.importorskip("diffusers")
    from samplegrad.diffusion.diffusers_adapter import from_diffusers

    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                 block_out_channels=(8, 16), layers_per_block=1,
                                 norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).cuda()
    model, sched = from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=100), 3)
    assert sched.timesteps.is_cuda
    cfg = finetune.FinetuneConfig(pop_size=2, lr=1e-4, kl_weight=0.1)
    state = finetune.finetune_init(model, sched, cfg, model.shape)
    state, info = finetune.finetune_step(state, model, sched, _reward, cfg)
    assert state.paths.is_cuda and info["grad_norm"] > 0
