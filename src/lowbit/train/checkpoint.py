"""Checkpoint files: atomic, checksummed, and loaded without ever unpickling code.

Layout: ``b"LOWBITCK"`` magic, one version byte, the SHA-256 of the payload (32 bytes), then the
payload: a ``torch.save`` archive of plain containers and tensors. Loading checks the magic, the
length and the checksum before ``torch.load(..., weights_only=True)`` touches the payload, so a
truncated or altered file raises :class:`CheckpointError` saying so, and nothing in it can
execute code. Writes go through :func:`lowbit.io.atomic_write_bytes` (temp file, fsync, rename),
so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import CheckpointError
from lowbit.io import atomic_write_bytes

MAGIC = b"LOWBITCK"
FORMAT_VERSION = 1
HEADER_LEN = len(MAGIC) + 1 + 32


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, dicts, lists, str, numbers) atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    atomic_write_bytes(Path(path), MAGIC + bytes([FORMAT_VERSION]) + hashlib.sha256(body).digest() + body)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if missing/corrupt."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"expected a checkpoint file, got a folder: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if len(raw) < HEADER_LEN or not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a lowbit checkpoint (bad header; truncated or another format)")
    version = raw[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {version} (this lowbit reads {FORMAT_VERSION})")
    digest, body = raw[len(MAGIC) + 1:HEADER_LEN], raw[HEADER_LEN:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path} is corrupt or truncated (checksum mismatch); it cannot be used")
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as exc:  # the checksum matched, so this is a foreign or unsafe payload
        raise CheckpointError(f"{path}: payload refused by the safe loader: {exc}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: checkpoint payload must be a dict, got {type(payload).__name__}")
    return payload
