"""SVHN reader: the cropped-digit ``train_32x32.mat`` / ``test_32x32.mat`` MATLAB v5 files
(X is 32x32x3xN uint8, y is Nx1 with label 10 meaning digit 0); the ``extra`` set is not used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lowbit.errors import DataError
from lowbit.data.files import require_dir, verify_md5sums
from lowbit.data.types import DatasetSplits, TensorData

SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
EXPECTED = "a MATLAB v5 file with X (32x32x3xN uint8) and y (Nx1, labels 1..10)"


def read_mat(path: Path, what: str) -> TensorData:
    """One SVHN split as (N, 3, 32, 32) uint8 images and labels 0..9."""
    expected = EXPECTED
    try:
        from scipy.io import loadmat

        mat = loadmat(str(path))
        X, y = mat["X"], mat["y"]
    except KeyError as exc:
        raise DataError(f"{what}: {str(path)!r} has no {exc.args[0]!r}; expected {expected}") from exc
    except Exception as exc:  # scipy raises several types for non-.mat or v7.3 (HDF5) files
        raise DataError(
            f"{what}: cannot read {str(path)!r} ({type(exc).__name__}: {exc}); expected {expected}"
        ) from exc
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DataError(f"{what}: {str(path)!r} X is {X.dtype} {X.shape}; expected {expected}")
    labels = np.asarray(y).reshape(-1)
    if labels.shape[0] != X.shape[3]:
        raise DataError(
            f"{what}: {str(path)!r} has {labels.shape[0]} labels for {X.shape[3]} images; "
            f"expected {expected}"
        )
    if not np.issubdtype(labels.dtype, np.number) or (
        labels.size and (labels.min() < 0 or labels.max() > 10 or np.any(labels % 1 != 0))
    ):
        raise DataError(f"{what}: {str(path)!r} has labels outside 1..10; expected {expected}")
    labels = labels.astype(np.int64) % 10  # 10 means digit 0
    x = torch.from_numpy(np.ascontiguousarray(X.transpose(3, 2, 0, 1)))
    return TensorData(x, torch.from_numpy(labels))


def load_svhn(directory: Path, seed: int) -> DatasetSplits:
    """SVHN cropped digits; ``seed`` only affects a validation hold-out."""
    what = "svhn"
    require_dir(directory, what)
    paths = {split: directory / name for split, name in FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{what}: missing file {str(path)!r}; expected {EXPECTED}")
    verify_md5sums(directory, list(paths.values()), what)
    train = read_mat(paths["train"], what)
    test = read_mat(paths["test"], what)
    return DatasetSplits(
        name="svhn", train=train, test=test, val=None, num_classes=10, in_channels=3,
        input_size=32, kind="image", mean=SVHN_MEAN, std=SVHN_STD,
        description=f"svhn: {len(train):,} train / {len(test):,} test from the official SVHN "
        "cropped-digit files (train_32x32.mat / test_32x32.mat; extra not used)",
    )
