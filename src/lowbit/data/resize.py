"""Resizing uint8 images (bilinear, rounded back to uint8), for models that need larger inputs
than a dataset has (e.g. 8x8 digits into a 32x32 network)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError
from lowbit.data.types import DatasetSplits, TensorData

CHUNK = 4096


def resize_images(data: TensorData, size: int) -> TensorData:
    """``data`` with every image resized to ``size`` x ``size`` (bilinear, antialiased when shrinking)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"resize_images: size must be a positive integer; got {size!r}")
    x = data.x
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ConfigError(
            f"resize_images needs uint8 images (N, C, H, W); got {x.dtype} {tuple(x.shape)}"
        )
    if x.shape[2] == size and x.shape[3] == size:
        return data
    shrink = size < x.shape[2] or size < x.shape[3]
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], CHUNK):
        chunk = x[start : start + CHUNK].to(torch.float32)
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )
        out[start : start + CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return TensorData(out, data.y)


def resize_splits(splits: DatasetSplits, size: int) -> DatasetSplits:
    """Every split of an image dataset resized to ``size``; mean/std are kept as they are."""
    if splits.kind != "image":
        raise ConfigError(f"resize: dataset {splits.name!r} holds {splits.kind}s, not images")
    if splits.input_size == size:
        return splits
    return dataclasses.replace(
        splits,
        train=resize_images(splits.train, size),
        test=resize_images(splits.test, size),
        val=None if splits.val is None else resize_images(splits.val, size),
        input_size=size,
        description=f"{splits.description}; images resized bilinearly to {size}x{size}",
    )
