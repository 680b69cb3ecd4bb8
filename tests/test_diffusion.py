"""Continuous diffusion pieces: strided schedules, the DDPM loss and the ancestral sampler."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplegrad.diffusion import (
    EpsMLP,
    SamplerSchedule,
    alpha_bars_from_betas,
    ddpm_loss,
    draw_noise,
    linear_alpha_bars,
    sample,
    sample_path,
    sampling_schedule,
)


def test_full_schedule_is_ddpm_and_strided_schedule_is_consistent():
    ab = linear_alpha_bars(1000)
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    s = sampling_schedule(ab, 1000, torch.float64)
    torch.testing.assert_close(s.coef_x, (1 - betas).rsqrt())
    torch.testing.assert_close(s.coef_eps, betas / ((1 - betas).sqrt() * (1 - ab).sqrt()))
    post = (1 - ab[:-1]) / (1 - ab[1:]) * betas[1:]  # DDPM posterior variance, t >= 1
    torch.testing.assert_close(s.sigma[1:] ** 2, post)
    assert s.sigma[0] ** 2 == pytest.approx(betas[0].item())
    s10 = sampling_schedule(ab, 10, torch.float64)
    assert s10.timesteps.tolist() == list(range(0, 1000, 100))
    torch.testing.assert_close(s10.alpha_bar_prev[1:], s10.alpha_bar[:-1])
    assert bool((s10.sigma > 0).all())


def test_bad_schedule_and_noise_inputs_raise():
    ab = linear_alpha_bars(100)
    for bad in (0, -1, 101):
        with pytest.raises(ValueError, match="n_steps"):
            sampling_schedule(ab, bad)
    with pytest.raises(ValueError, match="alpha_bars"):
        sampling_schedule(ab[None], 5)
    with pytest.raises(ValueError, match="n_train"):
        linear_alpha_bars(1)
    s = sampling_schedule(ab, 5)
    m = EpsMLP(dim=4, hidden=8, n_blocks=1, temb_dim=4)
    with pytest.raises(ValueError, match="noise"):
        sample(m, torch.zeros(5, 3, 4), s)  # needs T + 1 = 6
    with pytest.raises(ValueError, match="^x0:"):
        ddpm_loss(m, torch.zeros(4), ab)  # no batch axis
    with pytest.raises(ValueError, match="^x0:"):
        ddpm_loss(m, torch.zeros(3, 4, dtype=torch.long), ab)


def test_sampler_replays_its_noise_and_path_ends_at_sample():
    s = sampling_schedule(linear_alpha_bars(100), 7)
    m = EpsMLP(dim=4, hidden=8, n_blocks=1, temb_dim=4)
    torch.nn.init.normal_(m.out.weight, std=0.1)
    noise = draw_noise(s, 3, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        path = sample_path(m, noise, s)
        x0 = sample(m, noise, s)
        again = sample(m, noise.clone(), s)
    assert path.shape == (8, 3, 4)
    torch.testing.assert_close(path[-1], noise[-1])
    torch.testing.assert_close(path[0], x0)
    torch.testing.assert_close(again, x0, rtol=0, atol=0)  # same noise, same path


def test_ddpm_loss_decreases_on_a_tiny_model():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ab = linear_alpha_bars(100)
    x = torch.rand(64, 8) * 2 - 1
    x = torch.where(x > 0, 1.0, -1.0)  # a simple structured data set
    m = EpsMLP(dim=8, hidden=32, n_blocks=1, temb_dim=8)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def eval_loss() -> float:  # same timesteps and noise every time: a fixed estimate
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            return sum(ddpm_loss(m, x, ab, g).item() for _ in range(20)) / 20

    before = eval_loss()
    for _ in range(300):
        loss = ddpm_loss(m, x, ab, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    # the zero-initialized output layer predicts eps = 0, loss ~ E[eps^2] = 1
    assert before == pytest.approx(1.0, abs=0.1)
    assert after < 0.8 * before


def test_schedule_moves_and_noise_follows_the_generator_device():
    s = sampling_schedule(linear_alpha_bars(100), 4)
    s64 = s.to(torch.float64, device="cpu")
    assert s64.sigma.dtype == torch.float64 and s64.timesteps.dtype == torch.long
    assert s.to(device="cpu").sigma.dtype == torch.float32  # dtype kept when not given
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = draw_noise(s, 2, 3, gen, torch.float64, device="cpu")
    assert noise.shape == (5, 2, 3) and noise.device == gen.device


def test_eps_mlp_rejects_bad_sizes_naming_the_argument():
    for kwargs, name in (({"dim": 0}, "dim"), ({"hidden": 0}, "hidden"),
                         ({"n_blocks": -1}, "n_blocks"), ({"temb_dim": 3}, "temb_dim")):
        with pytest.raises(ValueError, match=f"^{name}:"):
            EpsMLP(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_sampler_and_loss_stay_on_the_gpu():
    s = sampling_schedule(linear_alpha_bars(100), 4)  # the schedule stays on the CPU
    m = EpsMLP(dim=4, hidden=8, n_blocks=1, temb_dim=4).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    noise = draw_noise(s, 3, 4, gen)
    assert noise.is_cuda
    with torch.no_grad():
        assert sample(m, noise, s).is_cuda
    x0 = torch.rand(5, 4, device="cuda")
    assert ddpm_loss(m, x0, linear_alpha_bars(100), gen).is_cuda


# ---------------------------------------------------------------- schedules from anything
def test_schedule_from_betas_alphas_cumprod_or_timesteps():
    betas = torch.linspace(1e-4, 0.02, 200, dtype=torch.float64)
    ab = alpha_bars_from_betas(betas)
    torch.testing.assert_close(ab, linear_alpha_bars(200, 1e-4, 0.02))
    a = SamplerSchedule.from_betas(betas, 8, torch.float64)
    b = SamplerSchedule.from_alphas_cumprod(ab, 8, torch.float64)
    c = sampling_schedule(ab.tolist(), 8, torch.float64)  # a plain list works too
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x, y)
        torch.testing.assert_close(x, z)
    s = sampling_schedule(ab, dtype=torch.float64, timesteps=[150, 0, 50, 100])  # any order
    assert s.timesteps.tolist() == [0, 50, 100, 150] and s.n_steps == 4
    torch.testing.assert_close(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    torch.testing.assert_close(s, sampling_schedule(ab, 4, torch.float64, timesteps=range(0,
                                                                                      200, 50)))


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha_bars": torch.linspace(0.1, 0.9, 10)}, "^alpha_bars: must be non-increasing"),
    ({"alpha_bars": torch.tensor([1.0, float("nan"), 0.5])}, "^alpha_bars: every"),
    ({"alpha_bars": torch.tensor([1.0, 1.0, 0.5]), "n_steps": 3}, "^alpha_bars: alpha_bar must"),
    ({"n_steps": float("nan")}, "^n_steps:"),
    ({"n_steps": True}, "^n_steps:"),
    ({"n_steps": None}, "^n_steps:"),
    ({"timesteps": [0, 100]}, "^timesteps: must lie in"),
    ({"timesteps": [3, 3]}, "^timesteps: must be distinct"),
    ({"timesteps": [0.5, 1.5]}, "^timesteps: must be a 1-d integer"),
    ({"timesteps": [0, 10], "n_steps": 3}, "^n_steps: 3 differs"),
])
def test_bad_schedules_name_the_argument(kwargs, match):
    args = {"alpha_bars": linear_alpha_bars(50), "n_steps": 5, **kwargs}
    if "timesteps" in kwargs and "n_steps" not in kwargs:
        args["n_steps"] = None
    with pytest.raises(ValueError, match=match):
        sampling_schedule(args.pop("alpha_bars"), args.pop("n_steps"), **args)


@pytest.mark.parametrize("betas", [[0.1, 1.0], [0.0, 0.1], [0.1, float("nan")], [0.2]])
def test_bad_betas(betas):
    with pytest.raises(ValueError, match="^betas:"):
        alpha_bars_from_betas(torch.tensor(betas, dtype=torch.float64))


# ---------------------------------------------------------------- any event shape
class ConvEps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * (1 + t[:, None, None, None].to(x.dtype) / 100)


def test_sampler_and_loss_on_images():
    s = sampling_schedule(linear_alpha_bars(100), 5)
    m = ConvEps()
    noise = draw_noise(s, 3, (1, 6, 6), torch.Generator().manual_seed(0))
    assert noise.shape == (6, 3, 1, 6, 6)
    with torch.no_grad():
        path = sample_path(m, noise, s)
        torch.testing.assert_close(path[0], sample(m, noise, s))
    assert path.shape == noise.shape
    loss = ddpm_loss(m, torch.rand(4, 1, 6, 6) * 2 - 1, linear_alpha_bars(100),
                     torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.dim() == 0 and m.conv.weight.grad is not None


def test_the_model_is_checked_where_its_output_enters():
    import samplegrad as sg

    s = sampling_schedule(linear_alpha_bars(100), 3)
    noise = draw_noise(s, 2, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^model: a noise model must return eps shaped like"):
        sample(lambda x, t: x[:, :2], noise, s)
    with pytest.raises(ValueError, match=r"^model: returned non-finite values"):
        sample(lambda x, t: x / 0.0, noise, s)
    with pytest.raises(ValueError, match=r"^model: returned non-finite values"):
        ddpm_loss(lambda x, t: x * float("nan"), torch.zeros(2, 4), linear_alpha_bars(100))
    with sg.validation(False):
        assert torch.isnan(sample(lambda x, t: x * float("nan"), noise, s)).all()
    with pytest.raises(ValueError, match=r"^noise: contains NaN or inf"):
        sample(lambda x, t: x, noise * float("nan"), s)
    with pytest.raises(TypeError, match=r"^sched:"):
        sample(lambda x, t: x, noise, linear_alpha_bars(100))
    with pytest.raises(TypeError, match=r"^generator:"):
        ddpm_loss(lambda x, t: x, torch.zeros(2, 4), linear_alpha_bars(100), generator=1)


@settings(max_examples=30, deadline=None)
@given(n=st.one_of(st.integers(-5, 0), st.floats(allow_nan=True), st.booleans(), st.none()),
       shape=st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
def test_draw_noise_rejects_bad_counts(n, shape):
    s = sampling_schedule(linear_alpha_bars(20), 2)
    with pytest.raises(ValueError, match="^n:"):
        draw_noise(s, n, shape)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), shape=st.lists(st.integers(1, 3), min_size=1, max_size=3))
def test_draw_noise_any_event_shape(n, shape):
    s = sampling_schedule(linear_alpha_bars(20), 2)
    assert draw_noise(s, n, tuple(shape)).shape == (3, n, *shape)
