"""CIFAR-10 reader: the official python-pickle batches (``data_batch_1``..``5`` and
``test_batch``) in ``data_dir`` or ``data_dir/cifar-10-batches-py``, loaded with a restricted
unpickler (see :mod:`lowbit.data.safe_pickle`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lowbit.errors import DataError
from lowbit.data.files import require_dir, verify_md5sums
from lowbit.data.safe_pickle import safe_load_pickle
from lowbit.data.types import DatasetSplits, TensorData

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
SUBDIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)


def _get(batch: dict, key: str) -> object:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_batch(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one pickled batch."""
    expected = "a dict with b'data' (N x 3072 uint8) and b'labels' (N ints in 0..9)"
    batch = safe_load_pickle(path, what)
    if not isinstance(batch, dict):
        raise DataError(f"{what}: {str(path)!r} holds a {type(batch).__name__}; expected {expected}")
    try:
        data, labels = _get(batch, "data"), _get(batch, "labels")
    except KeyError as exc:
        raise DataError(f"{what}: {str(path)!r} has no {exc.args[0]!r} entry; expected {expected}")
    data = np.asarray(data)
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: {str(path)!r} labels are not integers; expected {expected}") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{what}: {str(path)!r} data is {data.dtype} {data.shape}; expected {expected}"
        )
    if labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{what}: {str(path)!r} has {labels.shape[0]} labels for {data.shape[0]} images; "
            f"expected {expected}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{what}: {str(path)!r} has labels outside 0..9; expected {expected}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_split(folder: Path, names: tuple[str, ...], what: str) -> TensorData:
    parts = [read_batch(folder / name, what) for name in names]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return TensorData(x, y)


def batch_folder(directory: Path, what: str) -> Path:
    """``directory/cifar-10-batches-py`` when it exists, else ``directory``; all files present."""
    require_dir(directory, what)
    nested = directory / SUBDIR
    folder = nested if nested.is_dir() else directory
    for name in TRAIN_FILES + TEST_FILES:
        if not (folder / name).is_file():
            raise DataError(
                f"{what}: missing file {str(folder / name)!r}; expected the CIFAR-10 python "
                f"batches {', '.join(TRAIN_FILES + TEST_FILES)} in {str(directory)!r} or "
                f"{str(nested)!r}"
            )
    return folder


def load_cifar10(directory: Path, seed: int) -> DatasetSplits:
    """CIFAR-10 from its python batches; ``seed`` only affects a validation hold-out."""
    what = "cifar10"
    folder = batch_folder(directory, what)
    verify_md5sums(directory, [folder / name for name in TRAIN_FILES + TEST_FILES], what)
    train = _read_split(folder, TRAIN_FILES, what)
    test = _read_split(folder, TEST_FILES, what)
    return DatasetSplits(
        name="cifar10", train=train, test=test, val=None, num_classes=10, in_channels=3,
        input_size=32, kind="image", mean=CIFAR10_MEAN, std=CIFAR10_STD,
        description=f"cifar10: {len(train):,} train / {len(test):,} test from the official "
        "CIFAR-10 python batches (data_batch_1..5 / test_batch)",
    )
