"""Continuous diffusion pieces: strided schedules, the DDPM loss and the ancestral sampler."""

import pytest
import torch

from samplegrad.diffusion import (
    EpsMLP,
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
    with pytest.raises(ValueError, match="x0"):
        ddpm_loss(m, torch.zeros(3, 2, 4), ab)


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
