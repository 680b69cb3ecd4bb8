"""samplegrad: optimization through stochastic sampling."""

from samplegrad.categorical import (
    Method,
    ReDGECategorical,
    exact,
    gumbel_softmax,
    methods,
    redge,
    register,
    reinforce,
    reinmax,
    rloo,
    sampler,
    straight_through,
    surrogate,
)

__version__ = "0.1.0"

__all__ = [
    "Method",
    "ReDGECategorical",
    "exact",
    "gumbel_softmax",
    "methods",
    "redge",
    "register",
    "reinforce",
    "reinmax",
    "rloo",
    "sampler",
    "straight_through",
    "surrogate",
]
