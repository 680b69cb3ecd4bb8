"""Every config dataclass validates in ``__post_init__``: a bad value of any field raises a
``ValueError`` that names the field (property-based, with hypothesis)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import samplegrad as sg
from samplegrad.discrete import GuidanceConfig, MDMConfig, MDMTrainConfig
from samplegrad.implicit.finetune import FinetuneConfig
from samplegrad.implicit.langevin import LangevinConfig
from samplegrad.implicit.langevin_baselines import BaselineConfig
from samplegrad.spectral.model import SpectralConfig
from samplegrad.spectral.neural_baseline import NeuralConfig
from samplegrad_bench.tasks.vae import VAEConfig, VAETrainConfig

NAN, INF = float("nan"), float("inf")
junk = st.one_of(st.none(), st.text(max_size=4), st.lists(st.integers(), max_size=2))


def bad_int(minimum: int | None = 1) -> st.SearchStrategy:
    """Not an int >= minimum: smaller ints, floats (even integral ones), bools, junk."""
    small = [st.integers(max_value=minimum - 1)] if minimum is not None else []
    return st.one_of(*small, st.floats(allow_nan=True), st.booleans(), junk)


def bad_real(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
             allow_inf: bool = False) -> st.SearchStrategy:
    """Not a real number in the given bounds: out-of-range floats, NaN, bools, junk."""
    out = [st.just(NAN), st.booleans(), junk]
    if not allow_inf:
        out.append(st.sampled_from([INF, -INF]))
    if gt is not None:
        out.append(st.floats(max_value=gt, allow_nan=False))
    if ge is not None:
        out.append(st.floats(max_value=ge, exclude_max=True, allow_nan=False))
    if lt is not None:
        out.append(st.floats(min_value=lt, allow_nan=False))
    return st.one_of(*out)


def bad_choice(choices: list[str]) -> st.SearchStrategy:
    return st.one_of(st.text(max_size=6).filter(lambda s: s not in choices), st.none(),
                     st.integers())


def bad_bool() -> st.SearchStrategy:
    return st.one_of(st.integers(), st.none(), st.text(max_size=3))


OPTIMIZER = bad_choice(["Adam", "AdamW", "SGD"]).filter(
    lambda v: not (isinstance(v, str) and v and v[0].isupper()))  # never a real class name

LANGEVIN = {"step_size": bad_real(gt=0), "lr": bad_real(gt=0), "optimizer": OPTIMIZER,
            "kl_weight": bad_real(ge=0), "n_particles": bad_int(1), "n_ref": bad_int(1),
            "ref_burn_in": bad_int(0),
            "compile": st.one_of(st.none(), st.integers(), st.text(max_size=6).filter(
                lambda v: v not in torch.compiler.list_backends(exclude_tags=())))}

# (config class, valid base kwargs, {field: strategy of bad values})
CASES: list[tuple[type, dict[str, Any], dict[str, st.SearchStrategy]]] = [
    (LangevinConfig, {}, LANGEVIN),
    (BaselineConfig, {}, {**LANGEVIN, "compile": st.sampled_from([True, "inductor"]),
                          "n_inner": bad_int(1), "warm_start": bad_bool()}),
    (FinetuneConfig, {}, {"pop_size": bad_int(1), "lr": bad_real(gt=0), "optimizer": OPTIMIZER,
                          "kl_weight": bad_real(ge=0), "seed": bad_int(None),
                          "path_memory": bad_choice(["full", "recompute"])}),
    (MDMConfig, {"vocab_size": 4, "seq_len": 8, "width": 8, "heads": 2},
     {k: bad_int(1) for k in ("vocab_size", "seq_len", "width", "depth", "heads",
                              "mlp_ratio")}),
    (MDMTrainConfig, {}, {"steps": bad_int(1), "batch_size": bad_int(1), "lr": bad_real(gt=0),
                          "weight_decay": bad_real(ge=0), "warmup": bad_int(0),
                          "weighting": bad_choice(["elbo", "unweighted"]),
                          "grad_clip": bad_real(gt=0, allow_inf=True),
                          "optimizer": OPTIMIZER}),
    (GuidanceConfig, {}, {"method": bad_choice([*sg.methods()]).filter(lambda v: v != "exact")
                          | st.just("exact"),
                          "n_samples": bad_int(1), "n_opt_steps": bad_int(0),
                          "lr": bad_real(gt=0), "kl_weight": bad_real(ge=0, allow_inf=True),
                          "kl_mode": bad_choice(["prox", "gradient"]),
                          "warm_start": bad_bool(), "knobs": junk}),
    (SpectralConfig, {"whiten": "pca"}, {"degree": bad_int(1), "max_active": bad_int(1),
                          "n_times": bad_int(2), "t_min": bad_real(gt=0),
                          "t_max": bad_real(gt=1e-3), "ridge": bad_real(ge=0),
                          "cond_warn": bad_real(gt=0, allow_inf=True),
                          "method": bad_choice(["linear", "perturbative"]),
                          "whiten": bad_choice(["none", "standardize", "zca", "pca"]),
                          "clamp_sigmas": bad_real(ge=0, allow_inf=True),
                          "n_components": bad_int(1).filter(lambda v: v is not None),
                          "solver": bad_choice(["auto", "dense", "cg"]),
                          "dense_max": bad_int(1), "cg_tol": bad_real(gt=0),
                          "cg_max_iter": bad_int(1)}),
    (NeuralConfig, {}, {"hidden": bad_int(1), "layers": bad_int(1), "steps": bad_int(1),
                        "batch": bad_int(1), "lr": bad_real(gt=0), "t_min": bad_real(gt=0),
                        "t_max": bad_real(gt=1e-3),
                        "whiten": bad_choice(["none", "standardize", "zca", "pca"]),
                        "seed": bad_int(None)}),
    (VAEConfig, {}, {"n_pixels": bad_int(1), "n_latent": bad_int(1), "n_classes": bad_int(2)}),
    (VAETrainConfig, {}, {"estimator": bad_choice([*sg.methods()]), "knobs": junk,
                          "n_samples": bad_int(1), "lr": bad_real(gt=0),
                          "batch_size": bad_int(1), "dynamic_binarization": bad_bool(),
                          "baseline_decay": bad_real(ge=0, lt=1),
                          "per_datapoint_credit": bad_bool()}),
]
IDS = [c[0].__name__ for c in CASES]


@pytest.mark.parametrize(("cls", "base", "fields"), CASES, ids=IDS)
def test_defaults_are_valid_and_every_field_is_covered(cls, base, fields):
    cfg = cls(**base)
    assert dataclasses.is_dataclass(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(fields) <= names
    # every numeric / string field of a library config has a bad-value strategy
    if cls.__module__.startswith("samplegrad."):
        assert names - set(fields) <= {"knobs"}, names - set(fields)


@pytest.mark.parametrize(("cls", "base", "fields"), CASES, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_bad_value_raises_value_error_naming_the_field(cls, base, fields, data):
    name = data.draw(st.sampled_from(sorted(fields)), label="field")
    value = data.draw(fields[name], label="value")
    with pytest.raises(ValueError) as err:
        cls(**{**base, name: value})
    assert str(err.value).startswith(f"{name}:"), str(err.value)


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(min_value=1e-8, max_value=10.0),
       kl=st.floats(min_value=0.0, max_value=1e3),
       pop=st.integers(1, 512), seed=st.integers(0, 2**31))
def test_valid_values_are_accepted(lr, kl, pop, seed):
    cfg = FinetuneConfig(pop_size=pop, lr=lr, kl_weight=kl, seed=seed)
    assert cfg.lr == lr and not math.isnan(cfg.kl_weight)
    assert LangevinConfig(lr=lr, kl_weight=kl, n_particles=pop).lr == lr
    assert MDMTrainConfig(lr=lr, batch_size=pop, warmup=0).batch_size == pop
