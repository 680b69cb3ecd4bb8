"""The conv U-Net noise model (samplegrad.diffusion.EpsUNet)."""

import pytest
import torch

from samplegrad.diffusion import EpsUNet, ddpm_loss, linear_alpha_bars


def _perturbed(net, scale=0.1):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, dtype=p.dtype, device=p.device))
    return net


@pytest.mark.parametrize("channels,hw,mults", [(1, (28, 28), (1, 2, 2)), (3, (16, 12), (1, 2)),
                                               (2, (8, 8), (1,))])
def test_shapes_and_zero_output_at_init(channels, hw, mults):
    net = EpsUNet(channels=channels, base=4, mults=mults, groups=2)
    x = torch.randn(3, channels, *hw)
    t = torch.tensor([0, 10, 999])
    eps = net(x, t)
    assert eps.shape == x.shape
    assert torch.equal(eps, torch.zeros_like(eps))  # the output convolution starts at zero
    assert _perturbed(net)(x, t).abs().sum() > 0


def test_dtype_and_device_follow_the_weights():
    net = _perturbed(EpsUNet(base=4, groups=2)).double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    out = net(x, torch.tensor([1, 2]))
    assert out.dtype == torch.float64
    meta = EpsUNet(base=4, groups=2).to("meta")
    out = meta(torch.empty(2, 1, 28, 28, device="meta"), torch.zeros(2, dtype=torch.long,
                                                                      device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 1, 28, 28)


def test_gradient_reaches_every_parameter_and_the_input():
    torch.manual_seed(0)
    net = _perturbed(EpsUNet(base=4, groups=2))
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    net(x, torch.tensor([5, 500])).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = _perturbed(EpsUNet(base=4, mults=(1, 2), groups=2)).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, 7])
    assert torch.autograd.gradcheck(lambda z: net(z, t), (x,), eps=1e-6, atol=1e-5)


def test_samples_do_not_interact_through_the_batch():
    torch.manual_seed(0)
    net = _perturbed(EpsUNet(base=4, groups=2))
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(net(x, t)[1:2], net(x[1:2], t[1:2]), rtol=1e-5, atol=1e-6)


def test_a_few_training_steps_lower_the_ddpm_loss():
    torch.manual_seed(0)
    ab = linear_alpha_bars(100)
    x0 = -torch.ones(32, 1, 8, 8)  # one fixed image: eps is predictable from x_t
    x0[:, :, 2:6, 2:6] = 1.0
    net = EpsUNet(base=4, mults=(1, 2), groups=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator(device="cpu").manual_seed(0)
    first = None
    for _ in range(60):
        loss = ddpm_loss(net, x0, ab, gen)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = sum(ddpm_loss(net, x0, ab, gen).item() for _ in range(5)) / 5
    assert last < 0.7 * first


@pytest.mark.parametrize("kw,match", [({"base": 0}, "base"), ({"temb_dim": 7}, "temb_dim"),
                                      ({"mults": ()}, "mults"), ({"mults": (1, 0)}, "mults"),
                                      ({"channels": 0}, "channels"), ({"groups": 0}, "groups")])
def test_bad_settings_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        EpsUNet(**kw)


def test_bad_inputs_name_x():
    net = EpsUNet(base=4, groups=2)
    with pytest.raises(ValueError, match="x: must be images shaped"):
        net(torch.randn(2, 784), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 1, 30, 30), torch.tensor([1, 2]))
