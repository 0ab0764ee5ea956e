"""``ArrayLoader``: batches from in-memory tensors, much faster than ``torch.utils.data.DataLoader``
for data that already fits in memory. Batch order and augmentation are drawn from
``torch.Generator().manual_seed(seed * 1_000_003 + epoch)``, so any epoch can be replayed exactly
from (seed, epoch), which makes resuming a run exact."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lowbit.errors import ConfigError
from lowbit.data.augment import augment_batch, check_augment
from lowbit.data.types import TensorData

SEED_STRIDE = 1_000_003


def _per_channel(name: str, value: float | Sequence[float], channels: int, dims: int) -> torch.Tensor:
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(f"ArrayLoader: {name} needs 1 or {channels} values; got {len(values)}")
    if name == "std" and any(not v > 0 for v in values):
        raise ConfigError(f"ArrayLoader: std values must be positive; got {values}")
    return torch.tensor(values, dtype=torch.float32).view(1, channels, *([1] * (dims - 2)))


class ArrayLoader:
    """Iterate over ``(x, y)`` batches of ``data``: x float32 normalised, y int64.

    uint8 images become ``(x / 255 - mean) / std`` per channel, float sequences ``(x - mean) / std``.
    Call :meth:`set_epoch` before each epoch; with ``shuffle`` the order is
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))``.
    ``indices`` restricts the loader to those samples (shuffled among themselves).
    ``augment`` is None, ``"crop"`` or ``"crop_flip"`` (images only), applied before normalising
    and drawn from the same per-epoch generator.
    """

    def __init__(
        self,
        data: TensorData,
        *,
        batch_size: int,
        shuffle: bool,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        seed: int = 0,
        drop_last: bool = False,
        augment: str | None = None,
        indices: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"ArrayLoader: batch_size must be a positive integer; got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"ArrayLoader: seed must be a non-negative integer; got {seed!r}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.augment = check_augment(augment, data.x)
        self.epoch = 0
        if indices is None:
            self.indices = None
        else:
            self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
            if self.indices.numel() and (
                self.indices.min() < 0 or self.indices.max() >= len(data)
            ):
                raise ConfigError(f"ArrayLoader: indices must lie in 0..{len(data) - 1}")
        channels, dims = data.x.shape[1], data.x.dim()
        self._mean = _per_channel("mean", mean, channels, dims)
        self._std = _per_channel("std", std, channels, dims)
        scale = 255.0 if data.x.dtype == torch.uint8 else 1.0
        self._mul = 1.0 / (self._std * scale)
        self._sub = self._mean / self._std

    @property
    def num_samples(self) -> int:
        """How many samples one epoch draws from (before ``drop_last``)."""
        return len(self.data) if self.indices is None else int(self.indices.numel())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and augmentation) the next iteration uses."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"ArrayLoader: epoch must be a non-negative integer; got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The sample indices of the current epoch, in the order they will be served."""
        if generator is None:
            generator = self._generator()
        n = self.num_samples
        if self.shuffle:
            perm = torch.randperm(n, generator=generator)
            return perm if self.indices is None else self.indices[perm]
        return torch.arange(n) if self.indices is None else self.indices

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * SEED_STRIDE + self.epoch)

    def epoch_generator(self) -> torch.Generator:
        """A fresh generator of the current epoch: ``order(g)``, then augmentation draws, per batch."""
        return self._generator()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw batch -> float32 normalised batch."""
        return x.to(torch.float32, copy=True).mul_(self._mul).sub_(self._sub)  # never in place on the caller's data

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self._generator()
        order = self.order(generator)
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.data.x[idx]
            if self.augment is not None:
                x = augment_batch(x, self.augment, generator)
            yield self.normalise(x), self.data.y[idx]
