"""Gradient estimators for categorical variables (class axis last, any batch shape)."""

from samplegrad.categorical.distributions import ReDGECategorical
from samplegrad.categorical.exact import exact
from samplegrad.categorical.redge import redge
from samplegrad.categorical.registry import (
    Method,
    get_method,
    methods,
    register,
    sampler,
    surrogate,
)
from samplegrad.categorical.relaxed import gumbel_softmax, reinmax, straight_through
from samplegrad.categorical.score_function import reinforce, rloo

__all__ = [
    "Method",
    "ReDGECategorical",
    "exact",
    "get_method",
    "gumbel_softmax",
    "methods",
    "redge",
    "reinforce",
    "register",
    "reinmax",
    "rloo",
    "sampler",
    "straight_through",
    "surrogate",
]
