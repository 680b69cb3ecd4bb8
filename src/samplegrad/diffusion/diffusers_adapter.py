"""Use a Hugging Face diffusers ``UNet2DModel`` and its ``DDPMScheduler`` / ``DDIMScheduler``
with samplegrad (the ``[diffusers]`` extra: ``pip install "samplegrad[diffusers]"``).

* :class:`DiffusersEps` wraps the UNet as a samplegrad noise model ``eps = model(x, t)``
  (``x`` ``(N, C, H, W)``, ``t`` ``(N,)`` long); its parameters are the UNet's own (names
  prefixed ``unet.``), so finetuning trains the UNet in place; ``model.shape`` is the event
  shape ``(C, H, W)`` from the UNet's config.
* :func:`schedule_from_diffusers` reads the scheduler's ``alphas_cumprod`` and the training
  timesteps of its ``set_timesteps(n_steps)`` (its spacing and ``steps_offset``) into a
  :class:`~samplegrad.diffusion.SamplerSchedule` (the user's scheduler is not modified).

samplegrad's sampler is always the stochastic ancestral (DDPM posterior-variance) sampler on
those timesteps, whichever scheduler class they come from: the path KL between two models
needs the same non-zero noise at every step, so a deterministic DDIM (``eta = 0``) path is not
used; nor is ``clip_sample``. Only ``prediction_type="epsilon"`` is supported.

Nothing here imports diffusers at module import: the objects are used through their public
attributes, so this module loads without the extra::

    from diffusers import DDPMScheduler, UNet2DModel
    from samplegrad.diffusion.diffusers_adapter import from_diffusers

    model, sched = from_diffusers(unet, DDPMScheduler(num_train_timesteps=1000), n_steps=20)
    state = finetune.finetune_init(model, sched, cfg, model.shape)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from samplegrad.diffusion.schedules import SamplerSchedule, sampling_schedule

__all__ = ["DiffusersEps", "from_diffusers", "schedule_from_diffusers"]


class DiffusersEps(nn.Module):
    """A diffusers UNet (``UNet2DModel`` or anything called as ``unet(x, t,
    return_dict=False, **unet_kwargs)[0]``) as a noise model ``eps = model(x, t)``.

    ``unet_kwargs`` are passed on every call (e.g. fixed ``class_labels``).
    """

    def __init__(self, unet: nn.Module, **unet_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise TypeError(f"unet: must be a torch.nn.Module (e.g. a diffusers UNet2DModel), "
                            f"got {type(unet).__name__}")
        self.unet = unet
        self.unet_kwargs = unet_kwargs

    @property
    def shape(self) -> tuple[int, ...]:
        """The event shape ``(in_channels, H, W)`` from the UNet's config."""
        cfg = getattr(self.unet, "config", None)
        size = getattr(cfg, "sample_size", None)
        channels = getattr(cfg, "in_channels", None)
        if size is None or channels is None:
            raise AttributeError("unet: its config has no sample_size/in_channels; pass the "
                                 "event shape yourself")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return (int(channels), *(int(s) for s in hw))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.unet(x, t, return_dict=False, **self.unet_kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def schedule_from_diffusers(scheduler: Any, n_steps: int,
                            dtype: torch.dtype = torch.float32, *,
                            device: torch.device | str | None = None) -> SamplerSchedule:
    """The ``n_steps``-step ancestral sampler on a diffusers scheduler's noise schedule
    (``alphas_cumprod``) and timesteps (``set_timesteps(n_steps)`` on a copy), on
    ``device`` (default: where the scheduler keeps ``alphas_cumprod``)."""
    ab = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(ab, Tensor) or not hasattr(scheduler, "set_timesteps"):
        raise TypeError(f"scheduler: must be a diffusers scheduler with alphas_cumprod and "
                        f"set_timesteps (e.g. DDPMScheduler, DDIMScheduler), got "
                        f"{type(scheduler).__name__}")
    cfg = getattr(scheduler, "config", None)
    pred = getattr(cfg, "prediction_type", "epsilon")
    if pred != "epsilon":
        raise ValueError(f"scheduler: prediction_type={pred!r} is not supported (samplegrad's "
                         "noise models predict eps: use prediction_type='epsilon')")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: must be an int >= 1, got {n_steps!r}")
    s = copy.deepcopy(scheduler)
    s.set_timesteps(n_steps)
    ts = torch.as_tensor(s.timesteps, device=ab.device).long()
    sched = sampling_schedule(ab.to(torch.float64), None, dtype, timesteps=ts)
    return sched if device is None else sched.to(device=device)


def from_diffusers(unet: nn.Module, scheduler: Any, n_steps: int,
                   dtype: torch.dtype | None = None, **unet_kwargs: Any
                   ) -> tuple[DiffusersEps, SamplerSchedule]:
    """``(DiffusersEps(unet), schedule_from_diffusers(scheduler, n_steps))``, the schedule on
    the UNet's device and in its dtype (unless ``dtype`` is given)."""
    model = DiffusersEps(unet, **unet_kwargs)
    first = next(iter(unet.parameters()), None)
    device = first.device if first is not None else None
    dt = dtype or (first.dtype if first is not None and first.is_floating_point()
                   else torch.float32)
    return model, schedule_from_diffusers(scheduler, n_steps, dt, device=device)
