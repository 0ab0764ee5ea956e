"""The dataset registry: names -> readers, and :func:`load_dataset`, which checks arguments,
finds the data folder, calls the reader and optionally holds out a validation split."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowbit.errors import ConfigError, DataError, did_you_mean, unknown_name
from lowbit.data.cifar import load_cifar10
from lowbit.data.digits import load_digits_dataset
from lowbit.data.files import resolve_data_dir
from lowbit.data.mnist import load_mnist, load_mnist_t10k
from lowbit.data.mnist1d_gen import load_mnist1d
from lowbit.data.split import tuning_view, with_val_split
from lowbit.data.svhn import load_svhn
from lowbit.data.synthetic import OPTIONS as SYNTHETIC_OPTIONS
from lowbit.data.synthetic import load_synthetic
from lowbit.data.types import DatasetSplits

DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class DatasetEntry:
    """A registered reader: ``reader(directory_or_None, seed, **options) -> DatasetSplits``."""

    reader: Callable[..., DatasetSplits]
    uses_files: bool
    summary: str
    options: tuple[str, ...] = ()


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(load_digits_dataset, False, "scikit-learn's bundled 8x8 digits (no download)"),
    "mnist": DatasetEntry(load_mnist, True, "MNIST from the official IDX files (plain or .gz)"),
    "mnist-t10k": DatasetEntry(
        load_mnist_t10k, True, "the MNIST t10k IDX files split 8,000 / 2,000 by a fixed permutation"
    ),
    "cifar10": DatasetEntry(load_cifar10, True, "CIFAR-10 from the python-pickle batches"),
    "svhn": DatasetEntry(load_svhn, True, "SVHN cropped digits (train/test_32x32.mat)"),
    "mnist1d": DatasetEntry(load_mnist1d, False, "MNIST-1D sequences, generated offline"),
    "synthetic": DatasetEntry(
        load_synthetic, False, "seeded random class-mean + noise data", SYNTHETIC_OPTIONS
    ),
}


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def describe_datasets() -> dict[str, str]:
    """Name -> one-line summary of every registered dataset, sorted by name."""
    return {name: DATASETS[name].summary for name in list_datasets()}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.0,
    tuning_fraction: float = 0.0,
    **options: Any,
) -> DatasetSplits:
    """Load dataset ``name``.

    ``data_dir`` is the folder holding a file-based dataset's files (default
    ``$LOWBIT_DATA_DIR/<name>``, with ``./data`` when the variable is unset); it is ignored by
    generated datasets. ``val_fraction`` moves a seeded share of the train split to ``val``.
    ``seed`` affects only that hold-out and generated data (synthetic); official splits are fixed.
    ``options`` are reader-specific (only ``synthetic`` takes any). ``tuning_fraction`` > 0 returns
    the tuning view (``lowbit.data.split.tuning_view``): a fixed share of train replaces the test
    split, which is dropped; ``val_fraction`` then carves from what train is left.
    """
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 <= val_fraction < 1.0
    ):
        raise ConfigError(f"val_fraction must be a number in [0, 1); got {val_fraction!r}")
    entry = DATASETS[name]
    for key in options:
        if key not in entry.options:
            allowed = ", ".join(entry.options) if entry.options else "none"
            raise ConfigError(
                f"dataset {name!r} has no option {key!r}{did_you_mean(key, entry.options)}; "
                f"its options: {allowed}"
            )
    directory = resolve_data_dir(name, data_dir) if entry.uses_files else None
    splits = entry.reader(directory, seed, **options)
    for split, data in (("train", splits.train), ("test", splits.test)):
        if len(data) == 0:  # a run on it would train nothing or report NaN accuracy
            where = f" in {str(directory)!r}" if directory is not None else ""
            raise DataError(f"{name}: the {split} split is empty (0 samples){where}; the data files hold no examples")
    if tuning_fraction:
        splits = tuning_view(splits, float(tuning_fraction))
    return with_val_split(splits, float(val_fraction), seed)
