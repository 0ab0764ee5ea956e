"""Fit a zoo model to a dataset: channels, classes and input size, saying what was adapted.

Rule: a model takes the dataset's channels and classes. If the dataset's inputs are at least the
model's minimum input size, the model is built for the dataset's size; otherwise the images are
resized (bilinear) to the model's default input size. Either way the returned note says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.data import DatasetSplits, load_dataset, resize_splits
from lowbit.errors import ConfigError
from lowbit.models import create_model, model_info


@dataclass(frozen=True)
class ModelArgs:
    """Everything ``create_model`` needs to rebuild the same architecture."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    width_mult: float = 1.0

    def build(self) -> nn.Module:
        return create_model(self.name, num_classes=self.num_classes, in_channels=self.in_channels,
                            input_size=self.input_size, width_mult=self.width_mult)

    def sample_input(self) -> torch.Tensor:
        """One zero input of the model's shape (for MAC counts and split probes)."""
        spatial = 2 if model_info(self.name).kind == "image" else 1
        return torch.zeros(1, self.in_channels, *([self.input_size] * spatial))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "input_size": self.input_size, "width_mult": self.width_mult}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelArgs:
        return cls(str(data["name"]), int(data["num_classes"]), int(data["in_channels"]),
                   int(data["input_size"]), float(data.get("width_mult", 1.0)))


def fit_model_to_data(model: str, data: DatasetSplits, width_mult: float = 1.0) -> tuple[ModelArgs, DatasetSplits, str]:
    """Choose model arguments for ``data`` (resizing the data if needed); return a note saying which."""
    info = model_info(model)
    if info.kind != data.kind:
        raise ConfigError(f"model {model!r} takes {info.kind} inputs but dataset {data.name!r} holds "
                          f"{data.kind}s; pick a {data.kind} model (e.g. "
                          f"{'conv1d' if data.kind == 'sequence' else 'lenet5'})")
    if data.input_size >= info.min_input_size:
        size, note = data.input_size, f"{model} built for {data.name}'s input size {data.input_size}"
    else:
        size = info.default_input_size
        note = (f"{data.name} inputs ({data.input_size}) are smaller than {model} accepts "
                f"(min {info.min_input_size}): resized to {size}x{size}")
        data = resize_splits(data, size)
    return ModelArgs(model, data.num_classes, data.in_channels, size, width_mult), data, note


def load_model_and_data(model: str, dataset: str, data_dir: str | None = None, *, seed: int = 0,
                        val_fraction: float = 0.0, width_mult: float = 1.0, tuning_fraction: float = 0.0
                        ) -> tuple[ModelArgs, DatasetSplits, str]:
    """Load ``dataset`` (its tuning view with ``tuning_fraction``) and fit ``model`` to it (validates
    the model name before reading data)."""
    model_info(model)
    data = load_dataset(dataset, data_dir, seed=seed, val_fraction=val_fraction, tuning_fraction=tuning_fraction)
    return fit_model_to_data(model, data, width_mult)


def check_data_fits(args: ModelArgs, data_args: ModelArgs, dataset: str) -> None:
    """A model built elsewhere (a teacher's file) must fit the data it is used on."""
    for what in ("num_classes", "in_channels", "input_size"):
        if getattr(args, what) != getattr(data_args, what):
            raise ConfigError(f"the teacher ({args.name}) was built for {what} {getattr(args, what)} but "
                              f"{dataset} needs {getattr(data_args, what)}; train a teacher on {dataset}")
