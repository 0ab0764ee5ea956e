"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16),
stored as uint8 ``round(v * 255 / 16)`` and split 80/20 (1,437 train / 360 test) with
``train_test_split(test_size=0.2, stratify=y, random_state=0)``. No download; the default dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lowbit.data.stats import channel_stats
from lowbit.data.types import DatasetSplits, TensorData

SPLIT_SEED = 0


def load_digits_dataset(directory: Path | None, seed: int) -> DatasetSplits:
    """The fixed split of sklearn's digits; ``seed`` only affects a validation hold-out."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.data * (255.0 / 16.0)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=y, random_state=SPLIT_SEED
    )
    train = TensorData(torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]))
    test = TensorData(torch.from_numpy(x[test_idx]), torch.from_numpy(y[test_idx]))
    mean, std = channel_stats(train.x)
    return DatasetSplits(
        name="digits", train=train, test=test, val=None, num_classes=10, in_channels=1,
        input_size=8, kind="image", mean=mean, std=std,
        description=f"digits: {len(train):,} train / {len(test):,} test of scikit-learn's bundled "
        f"8x8 digits, stratified 80/20 split (random_state={SPLIT_SEED})",
    )
