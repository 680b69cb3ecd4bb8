"""The trainable parameters of a user's module, shared by the finetuning loops
(:mod:`samplegrad.implicit.finetune`, :mod:`samplegrad.discrete.finetune`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


def check_model(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: must be a torch.nn.Module, got {type(model).__name__}")
    return model


def trainable(model: nn.Module, params: Iterable[Tensor] | None) -> Params:
    """The parameters to train, by name in model order: ``params`` (a subset of the model's
    parameters, identified by identity) or every parameter with ``requires_grad``."""
    named = list(check_model(model).named_parameters())
    if params is None:
        out = {k: p for k, p in named if p.requires_grad}
        if not out:
            raise ValueError("model: has no parameters with requires_grad=True")
        return out
    if isinstance(params, Tensor):
        params = [params]
    try:
        chosen = list(params)
    except TypeError as e:
        raise TypeError(f"params: must be an iterable of the model's parameters, got "
                        f"{type(params).__name__}") from e
    ids = {id(p) for p in chosen}
    out = {k: p for k, p in named if id(p) in ids}
    if len(out) != len(ids) or not all(isinstance(p, Tensor) for p in chosen):
        raise ValueError("params: every entry must be a parameter of model (e.g. "
                         "model.out.parameters())")
    if not out:
        raise ValueError("params: is empty; there is nothing to train")
    if not all(p.requires_grad for p in out.values()):
        raise ValueError("params: every parameter to train needs requires_grad=True")
    return out


def optimized(model: nn.Module, optimizer: torch.optim.Optimizer) -> Params:
    """The parameters of ``model`` that ``optimizer`` updates, by name, in model order."""
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    params = {k: p for k, p in check_model(model).named_parameters() if id(p) in ids}
    if len(params) != len(ids):
        raise ValueError("model: the optimizer in the state updates tensors that are not "
                         "parameters of this model (pass the model given to the init)")
    return params
