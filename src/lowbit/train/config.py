"""Training hyper-parameters as a validated dataclass, and the optimizer/LR schedule they build."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 30
    gamma: float = 0.1
    device: str = "cpu"
    amp: bool = True  # used on CUDA only
    grad_clip: float | None = None
    warmup_epochs: float = 0.0  # linear LR warm-up over this many epochs (per step), then the schedule

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("momentum", "weight_decay", "gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.grad_clip is not None and not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise ConfigError(f"grad_clip must be a finite number > 0, got {self.grad_clip}")
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise ConfigError(f"warmup_epochs must be a finite number >= 0, got {self.warmup_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown LR schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}; choose cpu or cuda")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but CUDA is not available on this machine")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_optimizer(model: nn.Module, config: TrainConfig,
                    no_decay: Callable[[str], bool] = lambda name: False) -> torch.optim.Optimizer:
    """SGD (Nesterov-free momentum) or Adam; parameters for which ``no_decay(name)`` get no weight decay."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name) else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The LR multiplier at optimizer step ``step`` (0-based): (step + 1) / warmup_steps, then 1."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: cosine to zero over ``epochs``, step decay, or constant."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
