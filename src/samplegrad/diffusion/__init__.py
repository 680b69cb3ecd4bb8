"""Continuous diffusion pieces: schedules, a small noise-prediction net, DDPM loss/sampler."""

from samplegrad.diffusion.ddpm import (
    ddpm_loss,
    ddpm_step,
    draw_noise,
    sample,
    sample_path,
    step_mean,
)
from samplegrad.diffusion.nets import EpsMLP, timestep_embedding
from samplegrad.diffusion.schedules import SamplerSchedule, linear_alpha_bars, sampling_schedule

__all__ = [
    "EpsMLP",
    "SamplerSchedule",
    "ddpm_loss",
    "ddpm_step",
    "draw_noise",
    "linear_alpha_bars",
    "sample",
    "sample_path",
    "sampling_schedule",
    "step_mean",
    "timestep_embedding",
]
