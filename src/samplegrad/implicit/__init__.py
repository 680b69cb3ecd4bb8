"""Implicit Diffusion: optimizing the parameters of samplers through their samples."""

# finetune: DDPM finetuning (adjoint, queue); langevin: Langevin single loop + baselines
from samplegrad.implicit import finetune, langevin, langevin_baselines

__all__ = ["finetune", "langevin", "langevin_baselines"]
