"""samplegrad: optimization through stochastic sampling."""

from samplegrad.categorical import (
    ReDGECategorical,
    exact,
    gumbel_softmax,
    methods,
    redge,
    reinforce,
    reinmax,
    rloo,
    straight_through,
    surrogate,
)

__version__ = "0.1.0"

__all__ = [
    "ReDGECategorical",
    "exact",
    "gumbel_softmax",
    "methods",
    "redge",
    "reinforce",
    "reinmax",
    "rloo",
    "straight_through",
    "surrogate",
]
