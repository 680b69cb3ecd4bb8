"""Implicit Diffusion: optimizing the parameters of samplers through their samples."""

from samplegrad.implicit import langevin, langevin_baselines  # Langevin single loop + baselines

__all__ = ["langevin", "langevin_baselines"]
