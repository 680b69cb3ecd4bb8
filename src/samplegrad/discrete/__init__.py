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
    TrainConfig,
    TrainState,
    load_checkpoint,
    load_model,
    save_checkpoint,
    train_init,
    train_step,
)

__all__ = [
    "Denoiser", "GuidanceConfig", "MDMConfig", "TrainConfig", "TrainState",
    "categorical_draw", "check_tokens", "guided_logits", "initial_tokens", "kl_categorical",
    "load_checkpoint", "load_model", "make_guide", "mask_tokens", "masked_diffusion_loss",
    "sample", "save_checkpoint", "train_init", "train_step", "unmask_step",
]
