"""MNIST readers: ``mnist`` (the official 60k/10k IDX files) and ``mnist-t10k`` (only the two t10k
files, split into 8,000 train / 2,000 test by the fixed permutation
``np.random.default_rng(0).permutation(10000)``: its first 8,000 entries are train, the rest test).

Files may be plain or ``.gz``; headers, sizes and labels are validated, and an ``MD5SUMS`` file in
the folder, when present, is checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lowbit.errors import DataError
from lowbit.data.files import find_plain_or_gz, read_maybe_gz, require_dir, verify_md5sums
from lowbit.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx
from lowbit.data.types import DatasetSplits, TensorData

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
SIDE = 28
T10K_SPLIT_SEED = 0
T10K_TRAIN_FRACTION = 0.8


def idx_paths(directory: Path, prefix: str, what: str) -> list[Path]:
    """``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]`` in ``directory``."""
    return [
        find_plain_or_gz(directory, f"{prefix}-images-idx3-ubyte", what),
        find_plain_or_gz(directory, f"{prefix}-labels-idx1-ubyte", what),
    ]


def read_idx_pair(image_path: Path, label_path: Path, what: str) -> TensorData:
    """Validated images (N, 1, 28, 28) uint8 and labels (N,) int64 from two IDX files."""
    images = parse_idx(read_maybe_gz(image_path, what), image_path, IMAGES_MAGIC, what)
    labels = parse_idx(read_maybe_gz(label_path, what), label_path, LABELS_MAGIC, what)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(
            f"{what}: {str(image_path)!r} holds {images.shape[1]}x{images.shape[2]} images; "
            f"expected {SIDE}x{SIDE} MNIST images"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{what}: {str(label_path)!r} has {labels.shape[0]} labels but {str(image_path)!r} "
            f"has {images.shape[0]} images; expected one label per image"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(
            f"{what}: {str(label_path)!r} has label {int(labels.max())}; expected digits 0..9"
        )
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorData(x, y)


def _splits(name: str, train: TensorData, test: TensorData, description: str) -> DatasetSplits:
    return DatasetSplits(
        name=name, train=train, test=test, val=None, num_classes=10, in_channels=1,
        input_size=SIDE, kind="image", mean=MNIST_MEAN, std=MNIST_STD, description=description,
    )


def load_mnist(directory: Path, seed: int) -> DatasetSplits:
    """The official MNIST train and t10k IDX files from ``directory``."""
    what = "mnist"
    require_dir(directory, what)
    train_paths = idx_paths(directory, "train", what)
    test_paths = idx_paths(directory, "t10k", what)
    verify_md5sums(directory, train_paths + test_paths, what)
    train = read_idx_pair(*train_paths, what)
    test = read_idx_pair(*test_paths, what)
    return _splits(
        "mnist", train, test,
        f"mnist: {len(train):,} train / {len(test):,} test from the official MNIST IDX files "
        "(train-* and t10k-*)",
    )


def t10k_permutation(n: int) -> np.ndarray:
    """The fixed order used to split the t10k files: ``default_rng(0).permutation(n)``."""
    return np.random.default_rng(T10K_SPLIT_SEED).permutation(n)


def load_mnist_t10k(directory: Path, seed: int) -> DatasetSplits:
    """Only the t10k files, split 80/20 (8,000 / 2,000 for the real files) by a fixed permutation.

    ``seed`` does not change this split; it only affects a validation hold-out, if requested.
    """
    what = "mnist-t10k"
    require_dir(directory, what)
    paths = idx_paths(directory, "t10k", what)
    verify_md5sums(directory, paths, what)
    data = read_idx_pair(*paths, what)
    n = len(data)
    if n < 2:
        raise DataError(f"{what}: {str(paths[0])!r} holds {n} image(s); need at least 2 to split")
    order = torch.from_numpy(t10k_permutation(n))
    n_train = int(round(n * T10K_TRAIN_FRACTION))
    train, test = data.subset(order[:n_train]), data.subset(order[n_train:])
    return _splits(
        "mnist-t10k", train, test,
        f"mnist-t10k split: {len(train):,} train / {len(test):,} test of the official MNIST t10k "
        f"files, seeded permutation (np.random.default_rng({T10K_SPLIT_SEED}).permutation({n}))",
    )
