"""What every training run does before its method starts: check the global batch against the
processes, seed and set threads, load the dataset and fit the zoo model to it (saying what was
adapted), load ``--init`` float weights and find their float reference accuracy, and build the
(possibly rank-sharded) training loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.data import ArrayLoader, DatasetSplits
from lowbit.errors import ConfigError
from lowbit.runs.build import ModelArgs, load_model_and_data
from lowbit.runs.folder import RunFolder
from lowbit.runs.model_io import MODEL_FILE, load_float_weights
from lowbit.train import Reporter
from lowbit.train.distributed import DistInfo, ShardedLoader


def check_global_batch(batch_size: int, world_size: int) -> None:
    """--batch-size is the global batch: each of ``world_size`` processes takes an equal share."""
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                          f"{world_size} processes (each takes batch_size / {world_size})")


def init_accuracy(init: str) -> float | None:
    """The float reference accuracy when --init points at a float run folder."""
    path = Path(init)
    folder = RunFolder(path if path.is_dir() or path.name != MODEL_FILE else path.parent)
    if not folder.file("result.json").exists():
        return None
    result = folder.read_result()
    return result.get("accuracy") if result.get("method") == "float" else result.get("fp_accuracy")


def start_model(model: str, dataset: str, data_dir: str | None, *, seed: int, threads: int | None,
                init: str | None, reporter: Reporter, val_fraction: float = 0.0, width_mult: float = 1.0
                ) -> tuple[ModelArgs, DatasetSplits, nn.Module, float | None]:
    """Threads and seed set, data loaded, the model built (from ``init``'s float weights when
    given): (model args, data, model, float reference accuracy or None)."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    args, data, note = load_model_and_data(model, dataset, data_dir, seed=seed, val_fraction=val_fraction,
                                           width_mult=width_mult)
    reporter.log(f"[bold]{model}[/] on [bold]{data.name}[/]: {data.description}")
    reporter.log(note)
    net = args.build()
    fp_accuracy = None
    if init is not None:
        load_float_weights(net, init)
        fp_accuracy = init_accuracy(init)
    return args, data, net, fp_accuracy


def train_loader(data: DatasetSplits, batch_size: int, seed: int, info: DistInfo) -> Any:
    """The shuffled training loader of the global batch; each rank's share under DDP."""
    loader = ArrayLoader(data.train, batch_size=batch_size, shuffle=True, seed=seed, mean=data.mean, std=data.std)
    return ShardedLoader(loader, info.rank, info.world_size) if info.world_size > 1 else loader
