"""Bitwidth validation shared by every quantizer, plan and CLI flag.

A layer's bitwidth is an integer in 1..8 (deep quantization) or 32, which means "keep float".
"""

from __future__ import annotations

from collections.abc import Collection

from lowbit.errors import BitwidthError

FLOAT_BITS = 32
LOW_BITS: tuple[int, ...] = tuple(range(1, 9))
ALLOWED_BITS: tuple[int, ...] = LOW_BITS + (FLOAT_BITS,)


def _describe(allowed: Collection[int]) -> str:
    low = sorted(b for b in allowed if b != FLOAT_BITS)
    text = f"{low[0]}..{low[-1]}" if low == list(range(low[0], low[-1] + 1)) else ", ".join(map(str, low))
    return text + (f" or {FLOAT_BITS} (float)" if FLOAT_BITS in allowed else "")


def check_bits(bits: object, layer: str | None = None, allowed: Collection[int] = ALLOWED_BITS,
               what: str = "bitwidth") -> int:
    """Return ``bits`` as an int, or raise :class:`BitwidthError` naming the layer and allowed values."""
    where = f" for layer {layer!r}" if layer else ""
    if not isinstance(bits, (bool, int)) and hasattr(bits, "__index__"):  # numpy ints from a Discrete action
        bits = bits.__index__()
    if isinstance(bits, bool) or not isinstance(bits, int):
        if isinstance(bits, float) and bits.is_integer():
            bits = int(bits)
        else:
            raise BitwidthError(f"invalid {what} {bits!r}{where}: expected an integer in {_describe(allowed)}")
    if bits not in allowed:
        raise BitwidthError(f"invalid {what} {bits}{where}: allowed values are {_describe(allowed)}")
    return bits
