"""Batch augmentations for uint8 images, drawn from a given generator so that an epoch's
augmentations depend only on (seed, epoch): ``crop`` (random 32->32 crop after 4-pixel zero
padding) and ``crop_flip`` (the same plus a horizontal flip with probability 1/2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError

AUGMENTS = ("crop", "crop_flip")
PAD = 4


def check_augment(augment: str | None, x: torch.Tensor) -> str | None:
    """``augment`` if it is known and ``x`` holds images; raises ConfigError otherwise."""
    if augment is None:
        return None
    if augment not in AUGMENTS:
        raise ConfigError(f"unknown augment {augment!r}; choose one of: {', '.join(AUGMENTS)} or None")
    if x.dim() != 4:
        raise ConfigError(f"augment {augment!r} needs images (N, C, H, W); got shape {tuple(x.shape)}")
    return augment


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """Randomly crop (and maybe flip) each image of ``x`` (B, C, H, W), keeping its dtype."""
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD)).reshape(b, c, -1)
    dy = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    across = torch.arange(w).expand(b, w)
    if augment == "crop_flip":
        flip = torch.rand(b, generator=generator) < 0.5
        across = torch.where(flip[:, None], w - 1 - across, across)
    rows = dy[:, None] + torch.arange(h)  # (b, h) rows of the padded image
    cols = dx[:, None] + across  # (b, w) columns, reversed for flipped samples
    flat = rows[:, :, None] * (w + 2 * PAD) + cols[:, None, :]  # (b, h, w)
    out = padded.gather(2, flat.reshape(b, 1, h * w).expand(b, c, h * w))
    return out.reshape(b, c, h, w)
