"""Parsing the IDX format of the MNIST files: a 4-byte magic (0x00000803 for uint8 3-d image
arrays, 0x00000801 for uint8 1-d label arrays), big-endian uint32 dimensions, then raw bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from lowbit.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def parse_idx(raw: bytes, path: Path, magic: int, what: str) -> np.ndarray:
    """The uint8 array stored in ``raw`` (read from ``path``), checking magic and byte count."""
    ndim = magic & 0xFF
    label = "images" if magic == IMAGES_MAGIC else "labels"
    expected = f"an IDX {label} file (magic 0x{magic:08X}, {ndim} big-endian uint32 dims, uint8 data)"
    header_size = 4 + 4 * ndim
    if len(raw) >= 4:
        (found,) = struct.unpack(">I", raw[:4])
        if found != magic:
            raise DataError(f"{what}: {str(path)!r} has magic 0x{found:08X}; expected {expected}")
    if len(raw) < header_size:
        raise DataError(
            f"{what}: {str(path)!r} is {len(raw)} bytes, too short for {expected}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    count = int(np.prod(dims, dtype=np.int64))
    body = len(raw) - header_size
    if body != count:
        raise DataError(
            f"{what}: {str(path)!r} header says dims {dims} ({count} bytes) but holds {body} "
            f"data bytes; the file is truncated or not {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)
