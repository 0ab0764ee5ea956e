"""``mnist1d``: MNIST-1D generated offline with ``mnist1d.data.make_dataset(get_dataset_args())``
(default arguments: 4,000 train / 1,000 test sequences of length 40, generator seed 42).
The package's download path (``get_dataset``) is never used. ``make_dataset`` reseeds Python's
and numpy's global RNGs, so their states are saved and restored around it."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch

from lowbit.errors import DataError
from lowbit.data.stats import channel_stats
from lowbit.data.types import DatasetSplits, TensorData


@functools.lru_cache(maxsize=1)
def _generate() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise DataError(f"mnist1d: the 'mnist1d' package is not installed ({exc})") from exc
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = tuple(np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test"))
    for a in arrays:
        a.setflags(write=False)
    return arrays  # type: ignore[return-value]


def load_mnist1d(directory: Path | None, seed: int) -> DatasetSplits:
    """The default MNIST-1D split as float32 (N, 1, 40) sequences; ``seed`` only affects val."""
    x, y, x_test, y_test = _generate()

    def as_data(xs: np.ndarray, ys: np.ndarray) -> TensorData:
        return TensorData(
            torch.tensor(xs, dtype=torch.float32).unsqueeze(1), torch.tensor(ys, dtype=torch.int64)
        )

    train, test = as_data(x, y), as_data(x_test, y_test)
    mean, std = channel_stats(train.x)
    return DatasetSplits(
        name="mnist1d", train=train, test=test, val=None, num_classes=10, in_channels=1,
        input_size=int(train.x.shape[-1]), kind="sequence", mean=mean, std=std,
        description=f"mnist1d: {len(train):,} train / {len(test):,} test sequences of length "
        f"{train.x.shape[-1]}, generated offline by mnist1d.data.make_dataset with its default "
        "arguments (seed 42)",
    )
