"""Dense bit packing of k-bit integer codes (k = 1..8) into bytes.

Bit order (little-endian, LSB first): the codes form one bit stream in which code ``i`` occupies
stream bits ``i*k .. i*k + k - 1``, its least significant bit first; stream bit ``j`` is bit
``j % 8`` (value ``2 ** (j % 8)``) of byte ``j // 8``. ``n`` codes take ``ceil(n * k / 8)``
bytes; the unused high bits of the last byte are zero (``unpack_codes`` checks it).

Example, k = 3, codes [1, 2, 7]: stream bits 0..8 are 1,0,0 | 0,1,0 | 1,1,1, so the bytes are
0b11010001 = 0xD1 and 0b00000001 = 0x01. This is numpy's ``packbits(..., bitorder="little")``
of the codes' bit planes; the work is vectorized (no Python loop over elements).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lowbit.export.errors import ExportError

MAX_BITS = 8


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take when packed."""
    return math.ceil(count * bits / 8)


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= MAX_BITS:
        raise ExportError(f"packing needs a bit width in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


def _as_numpy(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    array = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ExportError(f"codes must be integers, got dtype {array.dtype}")
    return array.reshape(-1)


def pack_codes(codes: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes in ``0 .. 2**bits - 1`` (any shape, read flattened) into uint8 bytes."""
    bits = _check_bits(bits)
    flat = _as_numpy(codes)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ExportError(f"codes must lie in 0..{(1 << bits) - 1} for {bits} bits, "
                          f"got values in {int(flat.min())}..{int(flat.max())}")
    flat = flat.astype(np.uint8)
    if bits == 8:
        return flat.copy()
    shifts = np.arange(bits, dtype=np.uint8)
    planes = (flat[:, None] >> shifts) & 1  # (n, bits): bit b of code i, LSB first
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_codes(data: torch.Tensor | np.ndarray | bytes, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes (uint8) packed in ``data`` at ``bits`` bits each; inverse of :func:`pack_codes`.

    Raises :class:`ExportError` if ``data`` has not exactly ``ceil(count * bits / 8)`` bytes or
    its padding bits are not zero.
    """
    bits = _check_bits(bits)
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else np.asarray(data)
    if raw.dtype != np.uint8:
        raise ExportError(f"packed codes must be uint8 bytes, got dtype {raw.dtype}")
    raw = raw.reshape(-1)
    if count < 0 or raw.size != packed_nbytes(count, bits):
        raise ExportError(f"{count} codes at {bits} bits take {packed_nbytes(count, bits)} bytes, "
                          f"got {raw.size} (truncated or mismatched data)")
    if bits == 8:
        return raw.copy()
    stream = np.unpackbits(raw, bitorder="little")
    if stream[count * bits:].any():
        raise ExportError("packed codes have non-zero padding bits (corrupt data)")
    planes = stream[:count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits)).astype(np.uint8)
    return (planes * weights).sum(axis=1, dtype=np.uint16).astype(np.uint8)
