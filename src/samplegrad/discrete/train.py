"""Training a :class:`Denoiser` as an ``init`` / ``step`` pair over explicit state, and
checkpoints (model, optimizer, step, RNG, loss history) that resume exactly.

::

    state = train_init(MDMConfig(vocab_size=4, seq_len=8), MDMTrainConfig(steps=100))
    for _ in range(100):
        state, info = train_step(state, data, cfg)        # info: {"loss": ..., "lr": ...}
    save_train_state(path, state, cfg); model = load_model(path)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from samplegrad import distributed as _dist
from samplegrad._config import check_choice, check_int, check_real
from samplegrad._optim import OptimizerFactory, check_lr, check_optimizer_name, make_optimizer
from samplegrad.checkpoint import load_checkpoint, save_checkpoint
from samplegrad.diffusion._checks import shape_str
from samplegrad.discrete.loss import WEIGHTINGS, masked_diffusion_loss
from samplegrad.discrete.model import Denoiser, MDMConfig

__all__ = ["ClueFn", "MDMTrainConfig", "MDMTrainState", "load_model", "load_train_state",
           "save_train_state", "train_init", "train_step"]


@dataclass(frozen=True)
class MDMTrainConfig:
    """Optimization settings: ``torch.optim.<optimizer>`` (default AdamW, with
    ``weight_decay``), linear warm-up over ``warmup`` steps, then cosine decay to 10% of
    ``lr`` at ``steps``; gradients clipped to norm ``grad_clip``."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    weighting: str = "elbo"  # "elbo" | "unweighted" (see masked_diffusion_loss)
    grad_clip: float = 1.0
    optimizer: str = "AdamW"  # a torch.optim class name (or pass optimizer= to train_init)

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_lr(self.lr)
        check_real(self.weight_decay, "weight_decay", ge=0)
        check_int(self.warmup, "warmup", 0)
        check_choice(self.weighting, "weighting", WEIGHTINGS)
        check_real(self.grad_clip, "grad_clip", gt=0, allow_inf=True)
        check_optimizer_name(self.optimizer)


@dataclass
class MDMTrainState:
    """Everything a training run carries from one step to the next."""

    model: Denoiser
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # minibatches and masks, on the model's device
    step: int = 0
    losses: list[float] = field(default_factory=list)


def _lr_at(step: int, cfg: MDMTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(frac * math.pi)))


def _optimizer(model: Denoiser, cfg: MDMTrainConfig,
               factory: OptimizerFactory | None) -> torch.optim.Optimizer:
    options = {"weight_decay": cfg.weight_decay} if factory is None else {}
    return make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, factory, **options)


def train_init(model_cfg: MDMConfig, cfg: MDMTrainConfig, seed: int = 0, *,
               device: torch.device | str | None = None,
               optimizer: OptimizerFactory | None = None) -> MDMTrainState:
    """A fresh model (initialized from ``seed``, on ``device``) and its optimizer:
    ``optimizer(params)`` when that factory is given, else ``torch.optim.<cfg.optimizer>``
    with ``lr`` and ``weight_decay``. The learning-rate schedule of :func:`train_step` sets
    every parameter group's ``lr`` from ``cfg.lr`` either way."""
    check_int(seed, "seed")
    torch.manual_seed(seed)
    model = Denoiser(model_cfg).to(device)
    gen = torch.Generator(device=_device(model)).manual_seed(seed + 1)
    return MDMTrainState(model, _optimizer(model, cfg, optimizer), gen)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


ClueFn = Callable[[Tensor, torch.Generator], Tensor]
"""``clues(batch (B, L), generator) -> keep`` bool ``(B, L)``: the clue positions of an
infilling batch (never masked nor scored), drawn from the training generator."""


def train_step(state: MDMTrainState, data: Tensor, cfg: MDMTrainConfig, *,
               clues: ClueFn | None = None) -> tuple[MDMTrainState, dict[str, float]]:
    """One optimizer step on a batch drawn (with replacement) from ``data`` ``(N, L)``.

    Returns ``(state, {"loss": float, "lr": float})``; ``state`` is advanced in place (the
    same object is returned). ``data`` may live on any device; the batch moves to the
    model's. ``clues`` (infilling): draws each batch's clue positions (see
    :data:`ClueFn` and ``keep`` of :func:`masked_diffusion_loss`) after the batch, from
    ``state.generator``, so that a resumed run stays exact.

    Under ``torch.distributed`` (:func:`samplegrad.distributed.init_from_env`) every rank
    draws the same global batch and masks from ``state.generator`` (seeded alike), runs its
    shard of the items, and the gradients are summed over ranks before clipping: the same
    step as one process, up to the order of floating-point additions.
    """
    device = _device(state.model)
    idx = torch.randint(len(data), (cfg.batch_size,), generator=state.generator,
                        device=state.generator.device)
    batch = data[idx.to(data.device)].to(device)
    lr = _lr_at(state.step, cfg)
    for g in state.optimizer.param_groups:
        g["lr"] = lr
    state.model.train()
    parallel = _dist.world().distributed
    keep = None
    if clues is not None:
        keep = clues(batch, state.generator)
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != batch.shape:
            raise ValueError(f"clues: must return a bool tensor shaped {tuple(batch.shape)}, "
                             f"got {shape_str(keep)}")
    loss = masked_diffusion_loss(state.model, batch, weighting=cfg.weighting,
                                 generator=state.generator,
                                 shard=_dist.shard(len(batch)) if parallel else None,
                                 keep=keep)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if parallel:
        _dist.all_reduce_grads(state.model, op="sum")
        loss = _dist.all_reduce(loss.detach().clone())
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.step += 1
    value = float(loss.detach())
    state.losses.append(value)
    return state, {"loss": value, "lr": lr}


def save_train_state(path: str | Path, state: MDMTrainState, cfg: MDMTrainConfig,
                     extra: dict | None = None, *, keep_previous: bool = True) -> Path:
    """Atomically write ``state`` (and both configs, and ``extra``) to ``path``; the file it
    replaces is kept as ``PATH.prev`` unless ``keep_previous=False`` (see
    :func:`samplegrad.checkpoint.save_checkpoint`)."""
    blob = {"model_config": asdict(state.model.config), "train_config": asdict(cfg),
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "generator": state.generator.get_state(),
            "generator_device": state.generator.device.type, "step": state.step,
            "losses": state.losses, "extra": extra or {}}
    return save_checkpoint(path, blob, keep_previous=keep_previous)


def _check_blob(blob: dict) -> None:
    for key in ("model_config", "train_config", "model", "optimizer", "generator", "step",
                "losses"):
        blob[key]


def _load_blob(path: str | Path) -> dict:
    """The checked payload; a damaged file falls back to ``PATH.prev`` with a warning, else
    raises ``CheckpointError`` (see :func:`samplegrad.checkpoint.load_checkpoint`)."""
    blob = load_checkpoint(path, check=_check_blob)
    if blob is None:
        raise FileNotFoundError(f"path: no masked-diffusion checkpoint at {path}")
    return blob


def _model_from(blob: dict, map_location: torch.device | str | None) -> Denoiser:
    model = Denoiser(MDMConfig(**blob["model_config"]))
    model.load_state_dict(blob["model"])
    return model.to(map_location).eval()


def load_train_state(path: str | Path, cfg: MDMTrainConfig | None = None,
                     map_location: torch.device | str | None = None, *,
                     optimizer: OptimizerFactory | None = None) -> MDMTrainState:
    """An :class:`MDMTrainState` from :func:`save_train_state` (model in eval mode, on
    ``map_location``); the optimizer is rebuilt from ``cfg`` (default: the saved config) or
    the ``optimizer`` factory and its state restored. The rng resumes exactly on the device
    type it was saved from (else it is reseeded deterministically). Files are our own
    (pickled lists), hence ``weights_only=False``: load only checkpoints you trust."""
    blob = _load_blob(path)
    model = _model_from(blob, map_location)
    tcfg = cfg or MDMTrainConfig(**blob["train_config"])
    opt = _optimizer(model, tcfg, optimizer)
    opt.load_state_dict(blob["optimizer"])
    gen = torch.Generator(device=_device(model))
    if blob.get("generator_device", "cpu") == gen.device.type:
        gen.set_state(blob["generator"])
    else:  # saved on another device type: a deterministic reseed (not an exact resume)
        gen.manual_seed(int(blob["generator"].long().sum()) + int(blob["step"]))
    return MDMTrainState(model, opt, gen, int(blob["step"]), list(blob["losses"]))


def load_model(path: str | Path, map_location: torch.device | str | None = None) -> Denoiser:
    """Just the denoiser of a :func:`save_train_state` file, in eval mode, on
    ``map_location`` (default CPU)."""
    return _model_from(_load_blob(path), map_location)
