"""Masked (absorbing-state) discrete diffusion: a small transformer denoiser, its training
loss, a carry-over unmasking sampler with clamping, and reward guidance through categorical
gradient estimators."""

from samplegrad.discrete.guidance import GuidanceConfig, guided_logits, make_guide
from samplegrad.discrete.loss import mask_tokens, masked_diffusion_loss
from samplegrad.discrete.model import Denoiser, MDMConfig, check_tokens
from samplegrad.discrete.sampler import (
    categorical_draw,
    initial_tokens,
    kl_categorical,
    sample,
    unmask_step,
)
from samplegrad.discrete.train import (
    MDMTrainConfig,
    MDMTrainState,
    load_model,
    load_train_state,
    save_train_state,
    train_init,
    train_step,
)

__all__ = [
    "Denoiser", "GuidanceConfig", "MDMConfig", "MDMTrainConfig", "MDMTrainState",
    "categorical_draw", "check_tokens", "guided_logits", "initial_tokens", "kl_categorical",
    "load_model", "load_train_state", "make_guide", "mask_tokens", "masked_diffusion_loss",
    "sample", "save_train_state", "train_init", "train_step", "unmask_step",
]
