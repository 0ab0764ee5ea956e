"""Integer reference runtime (lowbit.export.intrun) against the fake-quant model, with its documented tolerances."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.export import IntegerLayer, integer_model, output_tolerance
from lowbit.export.intrun import LAYER_RTOL, accumulator_summary, integer_layers
from lowbit.nn import quantized_layers
from lowbit.plan import LayerBits, Plan
from lowbit.quant.registry import FAMILIES
from lowbit.runs.build import ModelArgs

from export_support import quantized

LENET = ModelArgs("lenet5", 10, 1, 28, 0.5)
RESNET = ModelArgs("resnet20", 10, 3, 16, 0.25)


def inputs(args: ModelArgs, n: int = 16) -> torch.Tensor:
    return torch.randn(n, args.in_channels, args.input_size, args.input_size, generator=torch.Generator().manual_seed(7))


def weight_only(bits: int) -> Plan:
    return Plan(LayerBits(bits, 32), LayerBits(8, 32))


def w_and_a(bits: int) -> Plan:
    return Plan.uniform(bits, bits)


FAMILY_BITS = [(f, b) for f in sorted(FAMILIES) for b in (2, 3, 8) if b in FAMILIES[f].weight.supported_bits] + [
    ("dorefa", 1), ("twn", 1), ("wrpn", 1)]


@pytest.mark.parametrize("args", [LENET, RESNET], ids=["lenet5", "resnet20"])
@pytest.mark.parametrize("family,bits", FAMILY_BITS)
def test_each_layer_matches_given_the_same_input(args: ModelArgs, family: str, bits: int) -> None:
    model, packed = quantized(args, family, w_and_a(bits))
    ints = integer_layers(integer_model(packed))
    seen = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0], out)))
             for name, layer in quantized_layers(model).items()]
    with torch.no_grad():
        model(inputs(args))
        for hook in hooks:
            hook.remove()
        assert set(seen) == set(ints)
        for name, (x, y) in seen.items():
            layer = model.get_submodule(name)
            if layer.input_quantizer is not None:  # the codes are the ones the fake-quant model rounds to
                q = layer.input_quantizer(x)
                codes = packed.acts[name].codes(x)
                assert torch.equal(codes, torch.round(q / packed.acts[name].step).float()), name
            diff = (ints[name](x) - y).abs().max()
            assert diff <= LAYER_RTOL * y.abs().max(), (name, float(diff))


@pytest.mark.parametrize("args", [LENET, RESNET], ids=["lenet5", "resnet20"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_end_to_end_without_activation_quantization(args: ModelArgs, family: str) -> None:
    model, packed = quantized(args, family, weight_only(2 if family != "wrpn" else 3))
    x = inputs(args)
    with torch.no_grad():
        y, y_int = model(x), integer_model(packed)(x)
    assert (y_int - y).abs().max() <= output_tolerance(packed, y)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("bits", [4, 8])
def test_end_to_end_with_activation_quantization_lenet(family: str, bits: int) -> None:
    model, packed = quantized(ModelArgs("lenet5", 10, 1, 28, 1.0), family, w_and_a(bits))
    x = inputs(packed.args, 32)
    with torch.no_grad():
        y, y_int = model(x), integer_model(packed)(x)
    assert (y_int - y).abs().max() <= output_tolerance(packed, y)
    assert (y_int - y).abs().max() <= 0.02 * y.abs().max()  # in practice much closer than the bound
    assert torch.equal(y_int.argmax(1), y.argmax(1))


@pytest.mark.parametrize("family", ["dorefa", "pact", "lsq"])
def test_end_to_end_with_activation_quantization_resnet_gross_agreement(family: str) -> None:
    # level flips cascade in deep nets (see intrun's docstring): only gross agreement is asserted
    model, packed = quantized(RESNET, family, w_and_a(4))
    x = inputs(RESNET, 32)
    with torch.no_grad():
        y, y_int = model(x), integer_model(packed)(x)
    assert (y_int - y).abs().max() <= 0.1 * y.abs().max()
    assert (y_int.argmax(1) == y.argmax(1)).float().mean() >= 0.9


def test_integer_sums_are_exact_and_fit_int32() -> None:
    model, packed = quantized(RESNET, "dorefa", w_and_a(8))
    layer = integer_layers(integer_model(packed))["layer2_0.conv1"]
    assert isinstance(layer, IntegerLayer) and layer.accumulator_bits == 32
    a = torch.randint(0, 256, (2, 4, 8, 8)).double()
    acc = layer.core(a)  # float64 convolution of integers
    cols = F.unfold(a, 3, padding=1, stride=2).round().long()  # (N, C*9, L): the int64 reference
    ref = torch.einsum("ok,nkl->nol", layer.core.weight.reshape(8, -1).round().long(), cols).reshape(acc.shape)
    assert torch.equal(acc.round().long(), ref) and torch.equal(acc, acc.round())
    summary = accumulator_summary(integer_model(packed))
    assert summary["conv1"] is None  # float network input: integer weights, float activations
    assert set(summary.values()) - {None} == {32}
