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
