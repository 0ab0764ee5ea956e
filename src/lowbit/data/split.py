"""Holding out a validation share of the train split, deterministically from a seed
(``np.random.default_rng(seed).permutation``); the test split is never touched."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lowbit.errors import ConfigError
from lowbit.data.types import DatasetSplits, TensorData


def hold_out(train: TensorData, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """(rest of train, val) with ``round(len(train) * fraction)`` samples in val.

    Both keep the original sample order; which samples go to val depends only on ``seed``.
    """
    n = len(train)
    n_val = int(round(n * fraction))
    if not 1 <= n_val < n:
        raise ConfigError(
            f"val_fraction={fraction} of {n} train samples gives {n_val} for validation; "
            f"need between 1 and {n - 1}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = torch.from_numpy(np.sort(perm[:n_val]))
    train_idx = torch.from_numpy(np.sort(perm[n_val:]))
    return train.subset(train_idx), train.subset(val_idx)


def with_val_split(splits: DatasetSplits, fraction: float, seed: int) -> DatasetSplits:
    """``splits`` with ``fraction`` of its train split moved to ``val`` (no-op for 0)."""
    if fraction == 0:
        return splits
    train, val = hold_out(splits.train, fraction, seed)
    return dataclasses.replace(
        splits, train=train, val=val,
        description=f"{splits.description}; val: {len(val):,} of the {len(splits.train):,} train "
        f"samples held out (fraction {fraction}, seed {seed}), leaving {len(train):,} to train",
    )


TUNING_SEED = 20261203  # the tuning hold-out is the same for every arm, seed and trial


def tuning_view(splits: DatasetSplits, fraction: float) -> DatasetSplits:
    """The data a tuner may see (BENCHMARKS.md, "The protocol"): ``fraction`` of the train split,
    held out with a fixed seed, takes the place of the test split, and the real test split is
    dropped, so nothing downstream (training, evaluation, result.json) can read it."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"tuning_fraction must be in (0, 1), got {fraction!r}")
    train, held = hold_out(splits.train, fraction, TUNING_SEED)
    return dataclasses.replace(
        splits, train=train, test=held, val=None,
        description=f"{splits.description}; TUNING VIEW: 'test' is {len(held):,} of the {len(splits.train):,} train "
        f"samples held out (fraction {fraction}, seed {TUNING_SEED}); the real test split is not loaded",
    )
