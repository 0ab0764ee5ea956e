"""DCQ's settings and results (METHODS.md section 4): the modes, the feature losses, the per-section
seed, ``DCQConfig`` (validated), and what training a section or the whole method returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import nn

from lowbit.errors import ConfigError, did_you_mean
from lowbit.executors import check_executor
from lowbit.plan import LayerBits
from lowbit.recipes import DCQ_SECTIONS
from lowbit.train import TrainConfig


MODES = ("independent", "sequential")
FEATURE_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}
SEED_STRIDE = 1_000_003


def section_seed(seed: int, index: int) -> int:
    """The torch seed of section ``index`` (0-based); ``index = K`` seeds the fine-tune."""
    return seed * SEED_STRIDE + index + 1


def _choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown DCQ {what} {value!r}{did_you_mean(str(value), choices)}; "
                          f"choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class DCQConfig:
    """How DCQ trains. ``train`` holds the per-section hyper-parameters (epochs, lr, optimizer,
    schedule, weight decay, device); ``finetune`` (None: no fine-tune) the end-to-end ones.
    ``executor="ray"`` trains the sections as Ray tasks (``lowbit.executors``) instead of ``workers``
    local processes: on the cluster at ``ray_address``, else a private Ray instance of ``workers``
    CPUs; each task is what a local worker does, so the sections come out the same."""

    mode: str = "independent"
    loss: str = "mse"
    train: TrainConfig = field(default_factory=lambda: DCQ_SECTIONS.train_config(10))
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    workers: int = 1
    threads_per_worker: int = 1
    seed: int = 0
    feature_cache: str | None = None
    feature_norm: bool = True  # feature losses in units of the teacher features' RMS (module doc)
    finetune: TrainConfig | None = None
    executor: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("loss", self.loss, tuple(FEATURE_LOSSES))
        for name in ("workers", "threads_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DCQ {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"DCQ seed must be an integer >= 0, got {self.seed!r}")
        check_executor(self.executor, self.ray_address)
        if self.mode == "sequential" and (self.workers > 1 or self.executor != "local"):
            raise ConfigError("sequential mode trains each section on the outputs of the ones before it, "
                              "one after the other; use mode 'independent' for parallel workers or Ray")
        if not self.kd_weight >= 0:
            raise ConfigError(f"kd_weight must be >= 0, got {self.kd_weight}")
        if not self.kd_temperature > 0:
            raise ConfigError(f"kd_temperature must be > 0, got {self.kd_temperature}")


@dataclass
class SectionResult:
    """One trained section: which children and layers it holds, its loss per epoch, its time."""

    index: int
    label: str
    layers: list[str]
    params: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    feature_rms: float | None = None  # r_i, the unit of the feature loss (None: plain loss, last section)

    @property
    def final_loss(self) -> float | None:
        return self.history[-1]["loss"] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        fields = {"index": self.index, "children": self.label, "layers": self.layers, "params": self.params,
                  "losses": [r["loss"] for r in self.history], "final_loss": self.final_loss,
                  "wall_s": self.wall_s, "feature_rms": self.feature_rms}
        if self.history and "train_acc" in self.history[-1]:
            fields["final_train_acc"] = self.history[-1]["train_acc"]
        return fields


@dataclass
class DCQResult:
    model: nn.Module  # the stitched quantized network (nn.Sequential, or a GraphModule for a traced model)
    students: list[nn.Module]
    split_at: list[str]
    bits: dict[str, LayerBits]  # resolved plan, full-model layer names
    sections: list[SectionResult]
    sections_wall_s: float
    stitched_accuracy: float | None = None
    accuracy: float | None = None  # after the fine-tune (= stitched_accuracy without one)
    finetune_history: list[dict[str, Any]] = field(default_factory=list)
