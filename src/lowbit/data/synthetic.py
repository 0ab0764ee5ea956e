"""``synthetic``: deterministic, learnable random data for fast tests. Each class has its own
random mean pattern (uniform in [0.2, 0.8] per value) and samples add Gaussian noise; images are
clipped to [0, 1] and stored as uint8, sequences are float32. Everything follows from ``seed``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lowbit.errors import ConfigError
from lowbit.data.stats import channel_stats
from lowbit.data.types import KINDS, DatasetSplits, TensorData

OPTIONS = ("num_classes", "in_channels", "input_size", "n_train", "n_test", "kind", "noise")


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"synthetic: {name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def load_synthetic(
    directory: Path | None,
    seed: int,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 16,
    n_train: int = 512,
    n_test: int = 256,
    kind: str = "image",
    noise: float = 0.15,
) -> DatasetSplits:
    """Class-mean-plus-noise data; labels are balanced (``i % num_classes``) then shuffled."""
    num_classes = _positive_int("num_classes", num_classes, 2)
    in_channels = _positive_int("in_channels", in_channels)
    input_size = _positive_int("input_size", input_size)
    n_train = _positive_int("n_train", n_train)
    n_test = _positive_int("n_test", n_test)
    if kind not in KINDS:
        raise ConfigError(f"synthetic: kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 10:
        raise ConfigError(f"synthetic: noise must be a number in [0, 10]; got {noise!r}")

    rng = np.random.default_rng(seed)
    shape = (in_channels, input_size, input_size) if kind == "image" else (in_channels, input_size)
    means = rng.uniform(0.2, 0.8, size=(num_classes, *shape))

    def draw(n: int) -> TensorData:
        y = rng.permutation(np.arange(n) % num_classes)
        x = means[y] + rng.normal(0.0, noise, size=(n, *shape))
        if kind == "image":
            xt = torch.from_numpy(np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8))
        else:
            xt = torch.from_numpy(x.astype(np.float32))
        return TensorData(xt, torch.from_numpy(y.astype(np.int64)))

    train, test = draw(n_train), draw(n_test)
    mean, std = channel_stats(train.x)
    return DatasetSplits(
        name="synthetic", train=train, test=test, val=None, num_classes=num_classes,
        in_channels=in_channels, input_size=input_size, kind=kind, mean=mean, std=std,
        description=f"synthetic: {n_train:,} train / {n_test:,} test random {kind}s "
        f"{'x'.join(map(str, shape))}, {num_classes} classes (class mean + noise {noise}), seed {seed}",
    )
