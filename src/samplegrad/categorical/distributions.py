"""``torch.distributions``-style wrapper: a one-hot categorical with ReDGE ``rsample``."""

from __future__ import annotations

import torch
from torch.distributions import Categorical, OneHotCategorical, constraints

from samplegrad._validation import validation_enabled
from samplegrad.categorical._checks import check_flag, check_n_steps, check_t1
from samplegrad.categorical.redge import VARIANTS, redge


class _Simplex(constraints.Constraint):
    """``constraints.simplex`` with a tolerance that follows the dtype: the probabilities of
    half-precision logits sum to 1 only to about ``K * eps`` (torch's fixed ``1e-6`` would
    refuse valid float16/bfloat16 input)."""

    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        tol = max(1e-6, value.shape[-1] * torch.finfo(value.dtype).eps)
        return torch.all(value >= 0, dim=-1) & ((value.sum(-1) - 1).abs() < tol)


class ReDGECategorical(OneHotCategorical):
    """``OneHotCategorical`` whose ``rsample`` is reparameterized by ReDGE.

    ``ReDGECategorical(logits=..., n_steps=5, t1=0.5).rsample((n,))`` returns one-hot
    samples ``(n, *batch_shape, K)`` carrying ReDGE's gradient (``hard=False``: the soft
    samples). ``batch_shape`` is ``logits.shape[:-1]``, ``event_shape`` is ``(K,)``;
    ``expand`` keeps the ReDGE settings (``n_steps``, ``t1``, ``variant``, ``exact``,
    ``hard``). ``log_prob``, ``entropy``, ``sample`` etc. are those of ``OneHotCategorical``;
    ``validate_args`` is passed to it (the simplex check of ``probs`` allows the rounding of
    float16/bfloat16); left at ``None`` it follows :func:`samplegrad.validation_enabled`
    (so it is off under ``torch.compile`` and ``torch.func``).
    ``rsample(..., generator=...)`` draws from a ``torch.Generator``.
    """

    has_rsample = True
    arg_constraints = {"probs": _Simplex(), "logits": constraints.real_vector}

    def __init__(self, probs: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                 n_steps: int = 5, t1: float = 0.5, variant: str = "paper",
                 exact: bool = False, hard: bool = True, validate_args: bool | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"variant: must be one of {VARIANTS}, got {variant!r}")
        hard = check_flag(hard, "hard")
        if variant == "max" and not hard:
            raise ValueError("variant: 'max' corrects the hard sample's gradient; use hard=True")
        self._set_knobs(check_n_steps(n_steps), check_t1(t1), variant,
                        check_flag(exact, "exact"), hard)
        if validate_args is None and not validation_enabled():
            validate_args = False  # compiling, in a torch.func transform, or switched off
        # OneHotCategorical.__init__, except that the inner Categorical does not run torch's
        # own simplex check (fixed 1e-6 tolerance); ours (dtype-aware) runs below
        self._categorical = Categorical(probs, logits, validate_args=False)
        super(OneHotCategorical, self).__init__(
            self._categorical.batch_shape, self._categorical.param_shape[-1:],
            validate_args=validate_args)

    def _set_knobs(self, n_steps: int, t1: float, variant: str, exact: bool,
                   hard: bool) -> None:
        self.n_steps, self.t1, self.variant, self.exact, self.hard = (
            n_steps, t1, variant, exact, hard)

    def expand(self, batch_shape: torch.Size | tuple[int, ...],
               _instance: ReDGECategorical | None = None) -> ReDGECategorical:
        """The same distribution broadcast to ``batch_shape`` (no copy of the logits), with
        the same ReDGE settings and ``validate_args``."""
        new = self._get_checked_instance(ReDGECategorical, _instance)
        new._set_knobs(self.n_steps, self.t1, self.variant, self.exact, self.hard)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = (), *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """ReDGE samples ``(*sample_shape, *batch_shape, K)``, differentiable in the logits."""
        shape = self._extended_shape(torch.Size(sample_shape))
        logits = self.logits.expand(shape)
        return redge(logits, self.n_steps, self.t1, self.hard, variant=self.variant,
                     exact=self.exact, generator=generator)
