"""ONNX QDQ export (lowbit.export.onnx_export), run in ONNX Runtime against PyTorch."""

from __future__ import annotations

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lowbit.export import ExportError, output_tolerance  # noqa: E402
from lowbit.export.onnx_export import (dequantized_weights, export_onnx, onnx_header, onnx_session,  # noqa: E402
                                       pick_type, run_onnx, to_onnx)
from lowbit.nn import quantized_layers  # noqa: E402
from lowbit.plan import LayerBits, Plan  # noqa: E402
from lowbit.runs.build import ModelArgs  # noqa: E402

from export_support import quantized  # noqa: E402

LENET = ModelArgs("lenet5", 10, 1, 28, 1.0)
RESNET = ModelArgs("resnet20", 10, 3, 16, 0.25)


def inputs(args: ModelArgs, n: int = 16) -> torch.Tensor:
    return torch.randn(n, args.in_channels, args.input_size, args.input_size, generator=torch.Generator().manual_seed(3))


def graph_types(proto) -> dict[str, str]:
    return onnx_header(proto)["onnx"]["types"]


def check_weights(model, proto, packed) -> None:
    """Every DequantizeLinear'd weight holds the grid's integers and step (float32 rounding from the fake-quant weight)."""
    dq = dequantized_weights(proto)
    for name, layer in quantized_layers(model).items():
        if layer.weight_quantizer is None:
            continue
        fake = layer.effective_weight().detach()
        got = dq[f"{name}.weight"]
        step = packed.weights[f"{name}.weight"].grid.step
        assert (got - fake).abs().max() <= 1e-6 * step * max(1, int(fake.abs().max() / step)), name


CASES = [("lenet5", "dorefa", 2), ("lenet5", "lsq", 3), ("lenet5", "twn", 2), ("lenet5", "wrpn", 8),
         ("lenet5", "pact", 1), ("resnet20", "dorefa", 4), ("resnet20", "lsq", 2), ("resnet20", "wrpn", 3),
         ("resnet20", "twn", 1), ("resnet20", "pact", 8)]


@pytest.mark.parametrize("model_name,family,bits", CASES)
def test_weight_only_round_trip_in_onnx_runtime(model_name: str, family: str, bits: int) -> None:
    args = LENET if model_name == "lenet5" else RESNET
    model, packed = quantized(args, family, Plan(LayerBits(bits, 32), LayerBits(8, 32)))
    proto = to_onnx(packed)
    check_weights(model, proto, packed)
    x = inputs(args)
    with torch.no_grad():
        y = model(x)
    y_onnx = run_onnx(onnx_session(proto), x)
    assert (y_onnx - y).abs().max() <= output_tolerance(packed, y)  # float rounding only: 1e-4 relative


@pytest.mark.parametrize("model_name,family,bits", [("lenet5", "dorefa", 4), ("lenet5", "pact", 8), ("lenet5", "lsq", 2),
                                                    ("lenet5", "wrpn", 3)])
def test_activation_quantized_round_trip_within_one_step(model_name: str, family: str, bits: int) -> None:
    model, packed = quantized(LENET, family, Plan.uniform(bits, bits))
    proto = to_onnx(packed)
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) == len(packed.acts)
    x = inputs(LENET, 32)
    with torch.no_grad():
        y = model(x)
    y_onnx = run_onnx(onnx_session(proto), x)
    assert (y_onnx - y).abs().max() <= output_tolerance(packed, y)
    assert torch.equal(y_onnx.argmax(1), y.argmax(1))


@pytest.mark.parametrize("family", ["dorefa", "lsq"])
def test_activation_quantized_resnet_gross_agreement(family: str) -> None:
    # level flips cascade in deep nets (see lowbit.export.intrun): only gross agreement is asserted
    model, packed = quantized(RESNET, family, Plan.uniform(4, 4))
    x = inputs(RESNET, 32)
    with torch.no_grad():
        y = model(x)
    y_onnx = run_onnx(onnx_session(to_onnx(packed)), x)
    assert (y_onnx - y).abs().max() <= 0.1 * y.abs().max()
    assert (y_onnx.argmax(1) == y.argmax(1)).float().mean() >= 0.9


def test_integer_types_follow_the_documented_rule() -> None:
    plan = Plan.from_layer_bits({"conv1": 8, "conv2": 2, "fc3": 3, "fc4": 5, "fc5": 8})
    _, dorefa = quantized(LENET, "dorefa", plan)
    _, lsq = quantized(LENET, "lsq", plan)
    _, twn = quantized(LENET, "twn", Plan.from_layer_bits({"conv1": 1, "conv2": 2, "fc3": 3, "fc4": 5, "fc5": 8}))
    assert graph_types(to_onnx(dorefa)) == {"conv1.weight": "INT16", "conv2.weight": "INT4", "fc3.weight": "INT4",
                                            "fc4.weight": "INT8", "fc5.weight": "INT16"}
    assert graph_types(to_onnx(lsq)) == {"conv1.weight": "INT8", "conv2.weight": "INT4", "fc3.weight": "INT4",
                                         "fc4.weight": "INT8", "fc5.weight": "INT8"}
    assert graph_types(to_onnx(lsq, opset=25))["conv2.weight"] == "INT2"
    assert graph_types(to_onnx(twn, opset=25))["conv1.weight"] == "INT2"
    assert set(graph_types(to_onnx(lsq, narrow=False)).values()) == {"INT8"}
    assert pick_type(-255, 255, 21).name == "INT16" and pick_type(0, 7, 21, signed=False).name == "UINT4"
    with pytest.raises(ExportError, match="opset"):
        to_onnx(lsq, opset=17)


def test_opset_25_int2_weights_run(tmp_path) -> None:
    model, packed = quantized(LENET, "lsq", Plan(LayerBits(2, 32), LayerBits(8, 32)))
    path = tmp_path / "m.onnx"
    size = export_onnx(packed, path, opset=25)
    assert path.stat().st_size == size
    proto = onnx.load(str(path))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {25}
    x = inputs(LENET)
    with torch.no_grad():
        y = model(x)
    assert (run_onnx(onnx_session(path), x) - y).abs().max() <= output_tolerance(packed, y)
    assert onnx_header(proto)["model"] == LENET.to_dict()
