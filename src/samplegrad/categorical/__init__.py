"""Gradient estimators for categorical variables (class axis last, any batch shape)."""

from samplegrad.categorical.antithetic import arm, arms, disarm
from samplegrad.categorical.distributions import ReDGECategorical
from samplegrad.categorical.exact import exact
from samplegrad.categorical.gapped import gst
from samplegrad.categorical.gumbel_rao import gumbel_rao
from samplegrad.categorical.rebar import (
    RelaxInfo,
    RelaxState,
    rebar,
    relax,
    relax_init,
    relax_step,
)
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
from samplegrad.categorical.unordered_set import unordered_set
from samplegrad.categorical.vimco import vimco

__all__ = [
    "Method",
    "ReDGECategorical",
    "RelaxInfo",
    "RelaxState",
    "arm",
    "arms",
    "disarm",
    "exact",
    "get_method",
    "gst",
    "gumbel_rao",
    "gumbel_softmax",
    "methods",
    "rebar",
    "redge",
    "register",
    "reinforce",
    "reinmax",
    "relax",
    "relax_init",
    "relax_step",
    "rloo",
    "sampler",
    "straight_through",
    "surrogate",
    "unordered_set",
    "vimco",
]
