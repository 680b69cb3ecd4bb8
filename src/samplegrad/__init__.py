"""samplegrad: optimization through stochastic sampling."""

from samplegrad._validation import set_validation, validation, validation_enabled
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
    "set_validation",
    "straight_through",
    "surrogate",
    "validation",
    "validation_enabled",
]
