"""Every categorical estimator under torch.compile(fullgraph=True), torch.func.grad and
torch.func.vmap, compared with eager mode given the same random numbers.

Compilation is slow on a CPU: each estimator is compiled once (backend "aot_eager", which
runs dynamo + AOT autograd like the default backend but skips code generation), and one test
runs the default inductor backend on ReDGE and Gumbel-softmax.
"""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import samplegrad as sg

SHAPE = (3, 4, 5)
DT = torch.float64
W = torch.linspace(-1.0, 2.0, math.prod(SHAPE), dtype=DT).reshape(SHAPE)
CLASS_W = torch.arange(SHAPE[-1], dtype=DT)


def f_obj(x):  # an objective (n_samples, *SHAPE) -> (n_samples,) for the score methods
    return ((x * CLASS_W).sum(-1) ** 2).sum((-1, -2))


def f_small(x):  # for exact enumeration: logits (2, 3) -> 9 configurations
    return ((x * CLASS_W[:3]).sum(-1) ** 2).sum(-1)


# name -> (logits shape, loss(logits) -> scalar); each loss draws its randomness inside
ESTIMATORS = {
    "redge": (SHAPE, lambda l: (sg.redge(l, 5, 0.5) * W).sum()),
    "redge_soft": (SHAPE, lambda l: (sg.redge(l, 4, 0.3, hard=False) * W).sum()),
    "redge_n2": (SHAPE, lambda l: (sg.redge(l, 2, 0.5) * W).sum()),
    "redge_exact": (SHAPE, lambda l: (sg.redge(l, 5, 0.5, exact=True) * W).sum()),
    "redge_cov": (SHAPE, lambda l: (sg.redge(l, 5, 0.5, variant="cov") * W).sum()),
    "redge_cov_exact": (SHAPE, lambda l: (sg.redge(l, 4, 0.5, variant="cov", exact=True)
                                          * W).sum()),
    "redge_max": (SHAPE, lambda l: (sg.redge(l, 5, 0.5, variant="max") * W).sum()),
    "straight_through": (SHAPE, lambda l: (sg.straight_through(l) * W).sum()),
    "straight_through_soft": (SHAPE, lambda l: (sg.straight_through(l, hard=False) * W).sum()),
    "gumbel_soft": (SHAPE, lambda l: (sg.gumbel_softmax(l, 0.5) * W).sum()),
    "gumbel_hard": (SHAPE, lambda l: (sg.gumbel_softmax(l, 0.5, hard=True) * W).sum()),
    "reinmax": (SHAPE, lambda l: (sg.reinmax(l, 1.5) * W).sum()),
    "gumbel_rao": (SHAPE, lambda l: (sg.gumbel_rao(l, 0.5, 4) * W).sum()),
    "gst": (SHAPE, lambda l: (sg.gst(l, 0.7, 0.5) * W).sum()),
    "reinforce": (SHAPE, lambda l: sg.reinforce(f_obj, l, 3, baseline=1.0)),
    "rloo": (SHAPE, lambda l: sg.rloo(f_obj, l, 3)),
    "exact": (SHAPE[1:2] + (3,), lambda l: sg.surrogate(f_small, l, method="exact")),
    "surrogate_redge": (SHAPE, lambda l: sg.surrogate(f_obj, l, "redge", 2, n_steps=3)),
    "sampler_gumbel_hard": (SHAPE, lambda l: (sg.sampler("gumbel_hard")(l) * W).sum()),
    "rsample": (SHAPE, lambda l: (sg.ReDGECategorical(logits=l, n_steps=3).rsample((2,))
                                  * W).sum()),
}


def _logits(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=DT) * 1.5
    logits[..., 0] = -math.inf  # a masked class everywhere
    return logits


def _eager(loss, logits, seed):
    lg = logits.clone().requires_grad_()
    torch.manual_seed(seed)
    value = loss(lg)
    (grad,) = torch.autograd.grad(value, lg)
    return value.detach(), grad


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_compile_grad_vmap_match_eager(name):
    shape, loss = ESTIMATORS[name]
    logits = _logits(shape)
    value, grad = _eager(loss, logits, seed=3)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad[..., 0].abs().max() == 0  # the masked class gets no gradient

    # torch.compile(fullgraph=True): forward and backward, same global-RNG draws
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    c_value, c_grad = _eager(compiled, logits, seed=3)
    torch.testing.assert_close(c_value, value)
    torch.testing.assert_close(c_grad, grad)

    # torch.func.grad
    torch.manual_seed(3)
    f_grad = torch.func.grad(loss)(logits)
    torch.testing.assert_close(f_grad, grad)

    # torch.func.vmap over a batch of logits: with randomness="same" each element sees the
    # draws of one eager call; with "different" the draws differ between elements
    batch = torch.stack([logits, _logits(shape, seed=1)])
    torch.manual_seed(3)
    v_values = torch.func.vmap(loss, randomness="same")(batch)
    torch.manual_seed(3)
    v_grads = torch.func.vmap(torch.func.grad(loss), randomness="same")(batch)
    for b in range(2):
        e_value, e_grad = _eager(loss, batch[b], seed=3)
        torch.testing.assert_close(v_values[b], e_value)
        torch.testing.assert_close(v_grads[b], e_grad)
    same = torch.stack([logits] * 64)
    d_values = torch.func.vmap(loss, randomness="different")(same)
    d_grads = torch.func.vmap(torch.func.grad(loss), randomness="different")(same)
    assert torch.isfinite(d_values).all() and torch.isfinite(d_grads).all()
    if name not in ("exact", "straight_through_soft"):  # random: 64 draws are not all alike
        assert d_values.unique().numel() > 1 or d_grads.flatten(1).unique(dim=0).shape[0] > 1


def test_vmap_with_noise_matches_a_loop():
    """The Gaussian/Gumbel noise passed in is batched like the logits."""
    logits = torch.stack([_logits(SHAPE, s) for s in range(3)])
    noise = torch.randn(3, *SHAPE, dtype=DT)
    for fn in (lambda l, e: sg.redge(l, 5, 0.5, hard=False, noise=e),
               lambda l, e: sg.redge(l, 4, 0.5, hard=False, exact=True, noise=e),
               lambda l, e: sg.redge(l, 4, 0.5, hard=False, variant="cov", noise=e),
               lambda l, e: sg.gumbel_softmax(l, 0.7, noise=e)):
        def loss(l, e, fn=fn):
            return (fn(l, e) * W).sum()

        torch.manual_seed(0)
        vals = torch.func.vmap(loss, randomness="same")(logits, noise)
        torch.manual_seed(0)
        grads = torch.func.vmap(torch.func.grad(loss), randomness="same")(logits, noise)
        for b in range(3):
            lg = logits[b].clone().requires_grad_()
            torch.manual_seed(0)  # exact=True draws the hard sample from the global RNG
            v = loss(lg, noise[b])
            (g,) = torch.autograd.grad(v, lg)
            torch.testing.assert_close(vals[b], v.detach())
            torch.testing.assert_close(grads[b], g)


def test_inductor_default_backend():
    """The default backend (inductor: generated C++ kernels) on ReDGE and Gumbel-softmax, fwd
    and bwd, against eager with the same draws (``fallback_random`` makes inductor use the
    eager RNG)."""
    import torch._inductor.config as inductor_config

    logits = torch.randn(16, 6, requires_grad=True)
    w = torch.randn(16, 6)
    with inductor_config.patch(fallback_random=True):
        for fn in (lambda l: sg.redge(l, 5, 0.5), lambda l: sg.gumbel_softmax(l, 0.5, True)):
            def loss(l, fn=fn):
                return (fn(l) * w).sum()

            torch._dynamo.reset()
            compiled = torch.compile(loss, fullgraph=True)
            for seed in (0, 1):  # the second call reuses the compiled code
                torch.manual_seed(seed)
                (g_c,) = torch.autograd.grad(compiled(logits), logits)
                torch.manual_seed(seed)
                (g_e,) = torch.autograd.grad(loss(logits), logits)
                torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)


class _NoHostSync(TorchDispatchMode):
    """Fails on ``aten._local_scalar_dense``: what ``.item()``, ``bool(t)``, ``.tolist()`` and
    data-dependent Python control flow dispatch to (a device-to-host sync on a GPU)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host sync (.item()/bool(tensor)) with validation off")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_no_host_sync_with_validation_off(name):
    shape, loss = ESTIMATORS[name]
    logits = _logits(shape).requires_grad_()
    with sg.validation(False), _NoHostSync():
        torch.autograd.grad(loss(logits), logits)
    with pytest.raises(AssertionError, match="host sync"), _NoHostSync():
        loss(logits)  # with validation on, the inputs are scanned (the mode does catch it)
