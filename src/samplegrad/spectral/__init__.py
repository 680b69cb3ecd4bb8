"""Optimization-free diffusion: OU score models from one linear solve in a Hermite eigenbasis.

```python
from samplegrad import spectral
model = spectral.fit(data, degree=3, max_active=2, whiten="zca")  # no optimizer
x = spectral.sample(model, 1000, n_steps=100, sampler="sde")      # or sampler="ode"
s = model.score(x, t=0.1)                                         # (N, d)
tilted, info = spectral.tilt(model, reward, lam=0.5, data=data)   # p0 exp(R / lam): one solve
```
"""

from samplegrad.spectral.affine import Affine
from samplegrad.spectral.basis import HermiteBasis, basis_size
from samplegrad.spectral.gaussians import GaussianMixture, random_mixture, relative_score_error
from samplegrad.spectral.metrics import (
    energy_distance,
    mmd_rbf,
    sample_metrics,
    sliced_wasserstein,
)
from samplegrad.spectral.model import SpectralConfig, SpectralScoreModel, fit, time_grid
from samplegrad.spectral.neural_baseline import NeuralConfig, NeuralScoreModel, train_dsm
from samplegrad.spectral.samplers import (
    sample,
    sample_probability_flow,
    sample_reverse_sde,
    sampling_times,
    tweedie_denoise,
)
from samplegrad.spectral.system import GramTerms, gram_terms, ou_expectation, rhs, solve_system
from samplegrad.spectral.tilt import SpectralEps, effective_sample_size, tilt, tilt_weights

__all__ = [
    "Affine", "GaussianMixture", "GramTerms", "HermiteBasis", "NeuralConfig", "NeuralScoreModel",
    "SpectralConfig", "SpectralEps", "SpectralScoreModel", "basis_size", "effective_sample_size",
    "energy_distance", "fit", "gram_terms", "mmd_rbf", "ou_expectation", "random_mixture",
    "relative_score_error", "rhs", "sample", "sample_metrics", "sample_probability_flow",
    "sample_reverse_sde", "sampling_times", "sliced_wasserstein", "solve_system", "tilt",
    "tilt_weights", "time_grid", "train_dsm", "tweedie_denoise",
]
