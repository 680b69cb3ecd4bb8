"""Continuous diffusion pieces: schedules, small noise-prediction nets (an MLP, a conv U-Net),
DDPM loss/sampler.

The diffusers adapter (``samplegrad.diffusion.diffusers_adapter``, the ``[diffusers]``
extra) is imported on its own: ``from samplegrad.diffusion.diffusers_adapter import
from_diffusers``.
"""

from samplegrad.diffusion.ddpm import (
    EpsModel,
    ddpm_loss,
    ddpm_step,
    draw_noise,
    predict_eps,
    sample,
    sample_path,
    step_mean,
)
from samplegrad.diffusion.nets import EpsMLP, EpsUNet, timestep_embedding
from samplegrad.diffusion.schedules import (
    SamplerSchedule,
    alpha_bars_from_betas,
    linear_alpha_bars,
    sampling_schedule,
)

__all__ = [
    "EpsMLP",
    "EpsModel",
    "EpsUNet",
    "SamplerSchedule",
    "alpha_bars_from_betas",
    "ddpm_loss",
    "ddpm_step",
    "draw_noise",
    "linear_alpha_bars",
    "predict_eps",
    "sample",
    "sample_path",
    "sampling_schedule",
    "step_mean",
    "timestep_embedding",
]
