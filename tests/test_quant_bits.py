"""Bitwidth validation (check_bits) and the quantizer registry / QuantizerSpec."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import BitwidthError, ConfigError, UnknownNameError
from lowbit.quant import (ALLOWED_BITS, FAMILIES, FLOAT_BITS, LOW_BITS, NO_QUANTIZER, LSQAct, LSQWeight, PACTAct,
                          QuantizerSpec, check_bits, get_family, list_quantizers)

BAD_BITS = [0, 9, 16, -1, 33, 2.5, float("nan"), "4", "", True, False, None, [4]]


@pytest.mark.parametrize("bits", BAD_BITS, ids=repr)
def test_check_bits_rejects(bits):
    with pytest.raises(BitwidthError) as info:
        check_bits(bits, "blocks.2.fc1")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'blocks.2.fc1'" in message
    assert "1..8" in message and "32" in message  # says what is allowed


@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_check_bits_accepts(bits):
    assert check_bits(bits, "x") == bits
    assert type(check_bits(bits)) is int


def test_allowed_sets():
    assert LOW_BITS == (1, 2, 3, 4, 5, 6, 7, 8)
    assert FLOAT_BITS == 32 and ALLOWED_BITS == LOW_BITS + (32,)


def test_check_bits_without_layer_name_and_custom_allowed_set():
    with pytest.raises(BitwidthError, match=r"^invalid bitwidth 9: allowed values are 1\.\.8 or 32"):
        check_bits(9)
    with pytest.raises(BitwidthError, match=r"allowed values are 2, 4, 8$"):
        check_bits(3, allowed=(2, 4, 8))


def test_float_bits_accepted_by_check_bits_but_not_by_quantizers():
    assert check_bits(32, "fc") == 32
    for family in FAMILIES.values():
        with pytest.raises(BitwidthError, match="'fc'"):
            family.weight(32, torch.randn(4), "fc")
        with pytest.raises(BitwidthError, match="'fc'"):
            family.act(32, "fc")


def test_lsq_weight_rejects_one_bit_but_supports_the_rest():
    with pytest.raises(BitwidthError, match="'conv1'"):
        LSQWeight(1, torch.randn(4), "conv1")
    for k in range(2, 9):
        assert LSQWeight(k, torch.randn(4), "conv1").bits == k


# ---- registry -------------------------------------------------------------------------------

def test_registry_lists_families():
    assert list_quantizers() == ["none", "dorefa", "lsq", "pact", "twn", "wrpn"]
    for name, family in FAMILIES.items():
        assert get_family(name) is family
        assert family.weight.family == family.act.family == name


def test_unknown_quantizer_name():
    with pytest.raises(UnknownNameError, match=r"unknown quantizer 'dorefo' \(did you mean 'dorefa'\?\)"):
        QuantizerSpec("dorefo")
    with pytest.raises(ConfigError, match="scale"):
        QuantizerSpec("dorefa", scale="mean")
    with pytest.raises(ConfigError, match="pact_alpha_init"):
        QuantizerSpec("pact", pact_alpha_init=0.0)
    with pytest.raises(ConfigError, match="bogus"):
        QuantizerSpec.from_dict({"name": "wrpn", "bogus": 1})


def test_spec_round_trip_and_builders():
    spec = QuantizerSpec("pact", scale="max", pact_alpha_init=4.0, pact_alpha_decay=1e-3)
    assert QuantizerSpec.from_dict(spec.to_dict()) == spec
    act = spec.make_act(3, "conv")
    assert isinstance(act, PACTAct) and act.alpha.item() == 4.0 and act.alpha_decay == 1e-3
    wq = spec.make_weight(3, torch.randn(5), "conv", "max")
    assert wq.family == "pact" and wq.scale_mode == "max" and wq.layer == "conv"
    assert isinstance(QuantizerSpec("lsq").make_act(2, "x"), LSQAct)
    assert QuantizerSpec(NO_QUANTIZER).name == "none"
