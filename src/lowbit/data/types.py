"""Plain containers for loaded data: one split (:class:`TensorData`) and a whole dataset
(:class:`DatasetSplits`). They hold tensors and facts about them, nothing about models."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import DataError

KINDS = ("image", "sequence")


@dataclass(frozen=True, eq=False)
class TensorData:
    """One split held in memory.

    ``x`` is ``uint8`` (N, C, H, W) for images stored raw as 0..255, or ``float32`` (N, C, L) for
    sequences; ``y`` is ``int64`` (N,) class indices.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError("TensorData needs torch tensors for x and y")
        if self.x.dtype not in (torch.uint8, torch.float32) or self.x.dim() not in (3, 4):
            raise DataError(
                "TensorData.x must be uint8 (N, C, H, W) images or float32 (N, C, L) sequences; "
                f"got {self.x.dtype} with shape {tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise DataError(
                f"TensorData.y must be int64 of shape (N,); got {self.y.dtype} {tuple(self.y.shape)}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"TensorData has {self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: torch.Tensor | list[int]) -> TensorData:
        """The samples at ``indices`` (copied), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorData(self.x[idx], self.y[idx])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A loaded dataset: its splits and what a model needs to know about their shape.

    ``input_size`` is the side length for images and the sequence length for sequences;
    ``mean``/``std`` are per-channel constants for normalisation, in units of x/255 for uint8
    images and raw units for sequences. ``description`` says honestly where the data came from.
    """

    name: str
    train: TensorData
    test: TensorData
    val: TensorData | None
    num_classes: int
    in_channels: int
    input_size: int
    kind: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"dataset kind must be one of {KINDS}; got {self.kind!r}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise DataError(
                f"{self.name}: mean/std need one value per channel ({self.in_channels}); "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(not s > 0 for s in self.std):
            raise DataError(f"{self.name}: std values must be positive; got {self.std}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, S, S) for images, (C, L) for sequences."""
        if self.kind == "image":
            return (self.in_channels, self.input_size, self.input_size)
        return (self.in_channels, self.input_size)
