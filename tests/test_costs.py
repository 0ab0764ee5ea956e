"""Compute costs of a plan (METHODS.md section 6): MACs, BOPs and accelerator speedups."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from lowbit.costs import ComputeCosts, compute_costs, layer_macs, model_compute_costs
from lowbit.errors import ConfigError
from lowbit.models import create_model
from lowbit.nn import layer_bits, quantize_
from lowbit.plan import LayerBits, Plan
from lowbit.quant.registry import QuantizerSpec

ALL_BITS = [1, 2, 3, 4, 5, 6, 7, 8, 32]


def _macs(layer: nn.Module, shape: tuple[int, ...]) -> int:
    torch.manual_seed(0)
    return layer_macs(nn.Sequential(layer), torch.randn(shape))["0"]


def test_layer_macs_by_hand() -> None:
    assert _macs(nn.Linear(10, 7), (3, 10)) == 10 * 7
    assert _macs(nn.Linear(10, 7), (3, 5, 10)) == 5 * 10 * 7  # a sequence: once per position
    assert _macs(nn.Conv2d(3, 8, 3, padding=1), (2, 3, 6, 6)) == 6 * 6 * 8 * 3 * 9
    assert _macs(nn.Conv2d(3, 8, (3, 2), stride=2), (2, 3, 9, 8)) == 4 * 4 * 8 * 3 * 6
    assert _macs(nn.Conv2d(4, 8, 3, groups=2), (1, 4, 5, 5)) == 3 * 3 * 8 * 2 * 9
    assert _macs(nn.Conv2d(6, 6, 3, groups=6), (2, 6, 5, 5)) == 3 * 3 * 6 * 1 * 9  # depthwise
    assert _macs(nn.Conv1d(2, 5, 4), (2, 2, 10)) == 7 * 5 * 2 * 4


def test_layer_macs_of_a_small_model_names_every_layer() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Sequential(nn.Linear(64, 5)))
    model.add_module("unused", nn.Linear(3, 3))  # registered, never run: 0 MACs
    model.forward = lambda x: model[3](model[2](model[1](model[0](x))))
    assert layer_macs(model, torch.zeros(2, 1, 6, 6)) == {"0": 4 * 4 * 4 * 9, "3.0": 64 * 5, "unused": 0}


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(0, 10), "x", None])
def test_bad_sample_inputs_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError, match="batch dimension"):
        layer_macs(nn.Sequential(nn.Linear(10, 2)), bad)


def test_layer_macs_restores_modes_and_hooks() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    model[1].eval()  # a frozen norm inside a training model stays frozen
    kept = model[0].register_forward_hook(lambda *args: None)
    modes = [m.training for m in model.modules()]
    assert layer_macs(model, torch.zeros(2, 4)) == {"0": 16, "2": 8}
    assert [m.training for m in model.modules()] == modes
    assert list(model[0]._forward_hooks) == [kept.id] and not model[2]._forward_hooks

    with pytest.raises(ConfigError, match=r"cannot run on a sample input of shape \(2, 5\)"):
        layer_macs(model, torch.zeros(2, 5))
    assert [m.training for m in model.modules()] == modes
    assert list(model[0]._forward_hooks) == [kept.id] and not model[2]._forward_hooks

    class Boom(nn.Module):
        def forward(self, x):
            raise KeyError("boom")

    model.add_module("boom", Boom())
    with pytest.raises(KeyError, match="boom"):
        layer_macs(model, torch.zeros(2, 4))
    assert [m.training for m in model.modules()] == modes + [True]
    assert list(model[0]._forward_hooks) == [kept.id] and not model[2]._forward_hooks


def _bits(*pairs: tuple[int, int]) -> dict[str, LayerBits]:
    return {f"l{i}": LayerBits(w, a) for i, (w, a) in enumerate(pairs)}


@pytest.mark.parametrize(("pairs", "serial", "fusion"), [
    ([(8, 8), (8, 8)], 1.0, 1.0),
    ([(8, 32), (8, 32)], 1.0, 1.0),  # float activations run at 8 on BitFusion
    ([(2, 32), (2, 32)], 4.0, 4.0),
    ([(4, 32), (4, 32)], 2.0, 2.0),
    ([(1, 32), (1, 32)], 8.0, 4.0),  # BitFusion rounds 1 bit up to a 2-bit brick
    ([(3, 32), (3, 32)], 8 / 3, 2.0),  # 3 -> 4 on BitFusion
    ([(2, 2), (2, 2)], 4.0, 16.0),
    ([(32, 32), (32, 32)], 0.25, 1.0),  # float weights: 32 serial bits, the 8-bit baseline on BitFusion
])
def test_uniform_speedups_by_hand(pairs, serial, fusion) -> None:
    costs = compute_costs({"l0": 100, "l1": 300}, _bits(*pairs))
    assert costs.macs == 400
    assert costs.bops == 400 * pairs[0][0] * pairs[0][1]
    assert costs.bit_serial_speedup == pytest.approx(serial)
    assert costs.bit_fusion_speedup == pytest.approx(fusion)


def test_mixed_layers_by_hand() -> None:
    macs = {"a": 1000, "b": 3000, "c": 500}
    bits = _bits((8, 32), (2, 4), (32, 32))
    bits = dict(zip(macs, bits.values()))
    costs = compute_costs(macs, bits)
    assert costs.macs == 4500
    assert costs.bops == 1000 * 8 * 32 + 3000 * 2 * 4 + 500 * 32 * 32
    assert costs.bit_serial_speedup == pytest.approx(4500 * 8 / (1000 * 8 + 3000 * 2 + 500 * 32))
    # bricks: (8/2)*(8/2)=16, (2/2)*(4/2)=2, float at 8: 16
    assert costs.bit_fusion_speedup == pytest.approx(4500 * 16 / (1000 * 16 + 3000 * 2 + 500 * 16))
    both = compute_costs(macs, bits, serial="both")  # w * a / 8, float activation at 8
    assert both.bit_serial_speedup == pytest.approx(4500 * 8 / (1000 * 8 + 3000 * 2 * 4 / 8 + 500 * 32))
    assert both.bops == costs.bops and both.bit_fusion_speedup == costs.bit_fusion_speedup
    assert costs.to_dict() == {"macs": 4500, "bops": costs.bops, "bit_serial_speedup": costs.bit_serial_speedup,
                               "bit_fusion_speedup": costs.bit_fusion_speedup}


def test_no_layers_and_bad_mode() -> None:
    assert compute_costs({}, {}) == ComputeCosts(0, 0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="weights, both"):
        compute_costs({}, {}, serial="activations")


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(ALL_BITS), st.sampled_from(ALL_BITS)),
                min_size=1, max_size=6),
       st.data())
def test_lowering_weight_bits_never_hurts(layers, data) -> None:
    macs = {f"l{i}": n for i, (n, _, _) in enumerate(layers)}
    bits = {f"l{i}": LayerBits(w, a) for i, (_, w, a) in enumerate(layers)}
    name = data.draw(st.sampled_from(sorted(bits)))
    lower = data.draw(st.sampled_from([b for b in ALL_BITS if b <= bits[name].weight]))
    lowered = {**bits, name: LayerBits(lower, bits[name].act)}
    for serial in ("weights", "both"):
        before, after = compute_costs(macs, bits, serial), compute_costs(macs, lowered, serial)
        assert after.bops <= before.bops and after.macs == before.macs
        assert after.bit_serial_speedup >= before.bit_serial_speedup
        assert after.bit_fusion_speedup >= before.bit_fusion_speedup


def test_quantized_zoo_model() -> None:
    torch.manual_seed(0)
    model = create_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    float_macs = layer_macs(model, x)
    assert float_macs["conv1"] == 28 * 28 * 6 * 25 and float_macs["fc5"] == 84 * 10
    quantize_(model, Plan.uniform(2), QuantizerSpec("dorefa"))
    model.train()
    assert layer_macs(model, x) == float_macs  # quantized layers count the same
    bits = layer_bits(model)
    costs = model_compute_costs(model, x)
    assert costs == compute_costs(float_macs, bits)
    assert model.training
    assert 1.0 < costs.bit_serial_speedup < 4.0 and 1.0 < costs.bit_fusion_speedup < 4.0  # first/last at 8
