"""``torch.distributions``-style wrapper: a one-hot categorical with ReDGE ``rsample``."""

from __future__ import annotations

import torch
from torch.distributions import OneHotCategorical, constraints

from samplegrad.categorical._checks import check_n_steps, check_t1
from samplegrad.categorical.redge import VARIANTS, redge


class ReDGECategorical(OneHotCategorical):
    """``OneHotCategorical`` whose ``rsample`` is reparameterized by ReDGE.

    ``ReDGECategorical(logits=..., n_steps=5, t1=0.5).rsample((n,))`` returns one-hot
    samples ``(n, *batch, K)`` carrying ReDGE's gradient (``hard=False``: the soft samples).
    ``log_prob``, ``entropy``, ``sample`` etc. are those of ``OneHotCategorical``.
    """

    has_rsample = True
    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}

    def __init__(self, probs: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                 n_steps: int = 5, t1: float = 0.5, variant: str = "paper",
                 exact: bool = False, hard: bool = True, validate_args: bool | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.n_steps, self.t1 = check_n_steps(n_steps), check_t1(t1)
        self.variant, self.exact, self.hard = variant, bool(exact), bool(hard)
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        logits = self.logits.expand(shape)
        return redge(logits, self.n_steps, self.t1, self.hard, variant=self.variant,
                     exact=self.exact)
