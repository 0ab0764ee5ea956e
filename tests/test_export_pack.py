"""Dense k-bit packing (lowbit.export.pack): round trips, the documented bit order, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.export import ExportError, pack_codes, packed_nbytes, unpack_codes


@st.composite
def codes_and_bits(draw):
    bits = draw(st.integers(1, 8))
    codes = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=67))
    return np.array(codes, dtype=np.int64), bits


@given(codes_and_bits())
def test_round_trip_any_bits_and_length(case) -> None:
    codes, bits = case
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_nbytes(codes.size, bits) == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, codes.size), codes)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 9, 1001, 4099])
def test_round_trip_lengths_not_multiple_of_8(bits: int, count: int) -> None:
    codes = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(bits * count))
    packed = pack_codes(codes, bits)  # torch input works too
    assert packed.size == (count * bits + 7) // 8
    assert torch.equal(torch.from_numpy(unpack_codes(torch.from_numpy(packed), bits, count)).long(), codes)


def test_documented_bit_order() -> None:
    # k = 3, codes [1, 2, 7]: stream bits 1,0,0 | 0,1,0 | 1,1,1 (LSB first) -> 0xD1, 0x01
    assert pack_codes(np.array([1, 2, 7]), 3).tolist() == [0xD1, 0x01]
    assert pack_codes(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b00001101, 0b1]
    assert pack_codes(np.array([0xA, 0x3]), 4).tolist() == [0x3A]
    assert unpack_codes(bytes([0xD1, 0x01]), 3, 3).tolist() == [1, 2, 7]


def test_empty() -> None:
    assert pack_codes(np.array([], dtype=np.int64), 5).size == 0
    assert unpack_codes(np.zeros(0, np.uint8), 5, 0).size == 0


@pytest.mark.parametrize("bits", [0, 9, 2.5, True])
def test_bad_bits(bits) -> None:
    with pytest.raises(ExportError, match="bit width"):
        pack_codes(np.array([0]), bits)


def test_codes_out_of_range_or_not_integers() -> None:
    with pytest.raises(ExportError, match="0..3"):
        pack_codes(np.array([0, 4]), 2)
    with pytest.raises(ExportError, match="0..3"):
        pack_codes(np.array([-1]), 2)
    with pytest.raises(ExportError, match="integers"):
        pack_codes(np.array([0.5]), 2)


def test_wrong_length_or_padding_is_an_error() -> None:
    packed = pack_codes(np.array([1, 2, 3]), 3)  # 9 bits: 2 bytes, 7 padding bits
    with pytest.raises(ExportError, match="truncated"):
        unpack_codes(packed[:1], 3, 3)
    with pytest.raises(ExportError, match="take 2 bytes"):
        unpack_codes(np.concatenate([packed, [0]]).astype(np.uint8), 3, 3)
    bad = packed.copy()
    bad[-1] |= 0x80
    with pytest.raises(ExportError, match="padding"):
        unpack_codes(bad, 3, 3)
    with pytest.raises(ExportError, match="uint8"):
        unpack_codes(packed.astype(np.int16), 3, 3)


# ---- each quantizer class owns its export grid (no table of quantizer classes in export/) ---------

@pytest.mark.parametrize("family", ["dorefa", "lsq", "pact", "twn", "wrpn"])
def test_every_family_gives_an_exact_integer_grid(family: str) -> None:
    """``integer_grid`` of every family and bitwidth reproduces its fake-quantized weights from codes,
    with no level table (the rule is exact), and activation quantizers name their grid."""
    from lowbit.export.grids import ACT_KINDS, encode_weight
    from lowbit.quant.registry import FAMILIES

    weight_cls, act_cls, _ = FAMILIES[family]
    assert sorted(FAMILIES) == ["dorefa", "lsq", "pact", "twn", "wrpn"]  # a new family joins the list above
    torch.manual_seed(0)
    w = torch.randn(16, 8) * 0.1
    for bits in getattr(weight_cls, "supported_bits", range(1, 9)):
        for scale in ("none", "max", "learned"):
            q = weight_cls(bits, w, layer="l", scale=scale)
            encoded = encode_weight("l.weight", q, w, q(w))
            assert encoded.table is None, (family, bits, scale)
            assert encoded.grid.bits == bits
    act = act_cls(4, "l")
    assert act.grid_kind in ACT_KINDS
    assert act.grid_param is None or isinstance(getattr(act, act.grid_param), torch.nn.Parameter)
