"""Per-channel mean/std of a split, for datasets whose normalisation constants are computed
from their own training data (deterministically, in float64)."""

from __future__ import annotations

import torch


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of ``x`` (N, C, ...); uint8 images are measured as x/255."""
    values = x.to(torch.float64)
    if x.dtype == torch.uint8:
        values = values / 255.0
    per_channel = values.transpose(0, 1).reshape(values.shape[1], -1)
    mean = per_channel.mean(dim=1)
    std = per_channel.std(dim=1, unbiased=False).clamp_min(1e-8)
    return (
        tuple(round(float(m), 6) for m in mean),
        tuple(round(float(s), 6) for s in std),
    )
