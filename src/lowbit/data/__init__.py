"""lowbit's data layer: readers for the supported datasets, a fast in-memory batch loader and
image resizing. Datasets know nothing about models or quantization.

>>> splits = load_dataset("digits", val_fraction=0.1)
>>> loader = ArrayLoader(splits.train, batch_size=64, shuffle=True, mean=splits.mean, std=splits.std)
"""

from __future__ import annotations

from lowbit.data.augment import AUGMENTS
from lowbit.data.loader import ArrayLoader
from lowbit.data.registry import DEFAULT_DATASET, describe_datasets, list_datasets, load_dataset
from lowbit.data.resize import resize_images, resize_splits
from lowbit.data.safe_pickle import SafeUnpickler, safe_load_pickle
from lowbit.data.split import hold_out
from lowbit.data.stats import channel_stats
from lowbit.data.types import DatasetSplits, TensorData

__all__ = [
    "AUGMENTS",
    "ArrayLoader",
    "DEFAULT_DATASET",
    "DatasetSplits",
    "SafeUnpickler",
    "TensorData",
    "channel_stats",
    "describe_datasets",
    "hold_out",
    "list_datasets",
    "load_dataset",
    "resize_images",
    "resize_splits",
    "safe_load_pickle",
]
