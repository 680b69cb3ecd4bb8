"""Training a :class:`Denoiser` as an ``init`` / ``step`` pair over explicit state, and
checkpoints (model, optimizer, step, RNG, loss history) that resume exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from samplegrad.checkpoint import save_checkpoint as atomic_save
from samplegrad.discrete.loss import masked_diffusion_loss
from samplegrad.discrete.model import Denoiser, MDMConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings (AdamW, linear warm-up then cosine decay to 10%)."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    weighting: str = "elbo"
    grad_clip: float = 1.0


@dataclass
class TrainState:
    """Everything a training run carries from one step to the next."""

    model: Denoiser
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    losses: list[float] = field(default_factory=list)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item()))


def train_init(model_cfg: MDMConfig, cfg: TrainConfig, seed: int = 0) -> TrainState:
    """A fresh model (initialized from ``seed``) and its optimizer."""
    torch.manual_seed(seed)
    model = Denoiser(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return TrainState(model, opt, torch.Generator().manual_seed(seed + 1))


def train_step(state: TrainState, data: Tensor, cfg: TrainConfig) -> float:
    """One AdamW step on a batch drawn (with replacement) from ``data`` ``(N, L)``; returns
    the loss and advances ``state`` in place."""
    idx = torch.randint(len(data), (cfg.batch_size,), generator=state.generator)
    for g in state.optimizer.param_groups:
        g["lr"] = _lr_at(state.step, cfg)
    state.model.train()
    loss = masked_diffusion_loss(state.model, data[idx], weighting=cfg.weighting,
                                 generator=state.generator)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.step += 1
    value = float(loss.detach())
    state.losses.append(value)
    return value


def save_checkpoint(path: str | Path, state: TrainState, cfg: TrainConfig,
                    extra: dict | None = None) -> Path:
    """Atomically write ``state`` (and the configs) to ``path``."""
    blob = {"model_config": asdict(state.model.config), "train_config": asdict(cfg),
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "generator": state.generator.get_state(), "step": state.step,
            "losses": state.losses, "extra": extra or {}}
    return atomic_save(path, blob)


def load_checkpoint(path: str | Path, cfg: TrainConfig | None = None) -> TrainState:
    """A :class:`TrainState` from :func:`save_checkpoint` (model in eval mode)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    model = Denoiser(MDMConfig(**blob["model_config"]))
    model.load_state_dict(blob["model"])
    model.eval()
    tcfg = cfg or TrainConfig(**blob["train_config"])
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    opt.load_state_dict(blob["optimizer"])
    gen = torch.Generator()
    gen.set_state(blob["generator"])
    return TrainState(model, opt, gen, int(blob["step"]), list(blob["losses"]))


def load_model(path: str | Path) -> Denoiser:
    """Just the denoiser of a checkpoint, in eval mode."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    model = Denoiser(MDMConfig(**blob["model_config"]))
    model.load_state_dict(blob["model"])
    return model.eval()
