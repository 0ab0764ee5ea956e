"""ONNX export on ONNX Runtime's integer kernels (lowbit.export.onnx_integer): every zoo model at a uniform
and a mixed plan loads in ORT, runs its quantized layers on integer kernels (read from ORT's optimized
graph), holds the packed file's integer codes, and matches the fake-quant model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


from lowbit.export import output_tolerance  # noqa: E402
from lowbit.export.bn_fold import fits_int8  # noqa: E402
from lowbit.export.onnx_checks import kernel_mismatches, weight_code_mismatches  # noqa: E402
from lowbit.export.onnx_export import run_onnx  # noqa: E402
from lowbit.export.onnx_integer import to_integer_onnx  # noqa: E402
from lowbit.export.speed import session  # noqa: E402
from lowbit.models import list_models  # noqa: E402
from lowbit.plan import LayerBits, Plan  # noqa: E402
from lowbit.runs.build import ModelArgs  # noqa: E402

from export_support import input_shape, quantized  # noqa: E402

SMALL = {"lenet5": (28, 1.0), "conv1d": (40, 1.0), "resnet20": (16, 0.5), "resnet18": (8, 0.125),
         "mobilenet": (8, 0.125), "vgg11": (32, 0.125), "alexnet": (16, 0.125), "simplenet": (16, 0.25),
         "svhnnet": (16, 0.25)}
SHALLOW = {"lenet5", "conv1d"}  # no residual adds, no pooling before a quantizer, few layers
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


def zoo_args(name: str) -> ModelArgs:
    from lowbit.models import model_info

    size, width = SMALL.get(name, (model_info(name).default_input_size, 0.25))
    return ModelArgs(name, 10, model_info(name).default_in_channels, size, width)


def mixed_plan(args: ModelArgs) -> Plan:
    """Every layer at its own bits (w 2..4, a 3..4): neighbouring layers quantize to different grids."""
    from lowbit.nn import quantizable_layers

    names = list(quantizable_layers(args.build()))
    return Plan.from_layer_bits({n: LayerBits(2 + i % 3, 3 + i % 2) for i, n in enumerate(names)})


def inputs(args: ModelArgs, n: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, *input_shape(args), generator=torch.Generator().manual_seed(seed))


def check_kernels(export) -> None:
    """ORT's optimized graph runs an integer kernel for every layer declared integer, and a float
    Conv/Gemm only for the layers declared float (each with its reason)."""
    assert kernel_mismatches(export) == []


def check_codes(export, packed) -> None:
    """The int8 weights are the packed file's integers times the code multiplier, bit for bit."""
    assert weight_code_mismatches(export, packed) == []


def run_with_codes(export, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Outputs, and the uint8 input codes of every integer layer, from ORT."""
    proto = onnx.ModelProto()
    proto.CopyFrom(export.proto)
    taps = {n.name: n.input[0] for n in proto.graph.node if n.op_type in ("QLinearConv", "QGemm") and n.name in export.layers}
    for tensor in dict.fromkeys(taps.values()):
        proto.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.UINT8, None))
    s = session(proto)
    outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input": x.numpy()})))
    return torch.from_numpy(outs["output"]), {layer: outs[t] for layer, t in taps.items()}


def model_input_codes(model, names, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The fake-quant model's input codes of the quantized layers ``names`` on ``x``."""
    from lowbit.export.grids import act_grid
    from lowbit.nn import quantized_layers

    ref, hooks = {}, []
    for name, layer in quantized_layers(model).items():
        if name in names:
            grid = act_grid(layer.input_quantizer)
            hooks.append(layer.register_forward_hook(
                lambda m, i, o, name=name, grid=grid: ref.__setitem__(name, grid.codes(i[0]).numpy())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return ref


def first_difference_is_small(model, codes: dict[str, np.ndarray], x: torch.Tensor, exact_path: bool) -> None:
    """In the first layer (graph order) whose input codes differ from the fake-quant model's, they differ by one
    level in at most 1% of the codes (5% when it reads an 8-bit approximated tensor, rounded twice)."""
    ref = model_input_codes(model, codes, x)
    for name, got in codes.items():
        diff = np.abs(got.astype(np.float64) - ref[name])
        if diff.any():
            assert diff.max() <= 1 and (diff > 0).mean() <= (0.01 if exact_path else 0.05), (name, (diff > 0).mean())
            return


@pytest.mark.parametrize("plan_kind", ["uniform", "mixed"])
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_runs_on_integer_kernels(name: str, plan_kind: str) -> None:
    args = zoo_args(name)
    plan = Plan.uniform(4, 4) if plan_kind == "uniform" else mixed_plan(args)
    model, packed = quantized(args, "dorefa", plan)
    x = inputs(args)
    with torch.no_grad():
        y = model(x)
    tol = output_tolerance(packed, y)
    for kernels in ("integer", "exact"):
        export = to_integer_onnx(packed, kernels)
        check_kernels(export)
        check_codes(export, packed)
        # the first layer (float network input) is float; every layer with quantized input and int8-sized weights
        # is integer in the 'integer' graph
        for lname, kernel in export.layers.items():
            enc, grid = packed.weights.get(f"{lname}.weight"), packed.acts.get(lname)
            if kernels == "integer" and enc is not None and grid is not None and fits_int8(enc):
                assert kernel.kind == "integer", (lname, kernel.reason)
        y_onnx, codes = run_with_codes(export, x)
        assert y_onnx.shape == y.shape and torch.isfinite(y_onnx).all()
        if name in SHALLOW:  # within one activation step at the last layer (intrun's tolerance)
            assert (y_onnx - y).abs().max() <= tol, (kernels, float((y_onnx - y).abs().max()), tol)
        # deep random-init nets amplify any level flip (see lowbit.export.intrun), so the codes are checked where
        # they first differ: a few, by one level (the int32 bias is rounded to accumulator units)
        first_difference_is_small(model, codes, x, exact_path=kernels == "exact" or not export.approximated)


def test_eight_bit_dorefa_weights_are_float_and_say_why() -> None:
    args = zoo_args("lenet5")
    model, packed = quantized(args, "dorefa", Plan.uniform(8, 8))
    export = to_integer_onnx(packed, "integer")
    assert export.layers["conv2"].kind == "float" and "9 bits" in export.layers["conv2"].reason
    assert export.layers["conv1"].kind == "float" and "not quantized" in export.layers["conv1"].reason
    check_kernels(export)
    model_lsq, packed_lsq = quantized(args, "lsq", Plan.uniform(8, 8))  # LSQ's 8-bit grid -128..127 fits int8
    export = to_integer_onnx(packed_lsq, "exact")
    assert [k.kind for k in export.layers.values()] == ["float", "integer", "integer", "integer", "integer"]
    x = inputs(args)
    with torch.no_grad():
        y = model_lsq(x)
    assert (run_onnx(session(export.proto), x) - y).abs().max() <= output_tolerance(packed_lsq, y)


@pytest.mark.parametrize("family,bits", [("lsq", 2), ("pact", 3), ("wrpn", 4), ("twn", 2), ("dorefa", 1)])
def test_other_quantizers_match_on_lenet(family: str, bits: int) -> None:
    args = zoo_args("lenet5")
    model, packed = quantized(args, family, Plan.uniform(bits, bits))
    export = to_integer_onnx(packed, "exact")
    check_kernels(export)
    check_codes(export, packed)
    x = inputs(args, 64)
    with torch.no_grad():
        y = model(x)
    y_onnx = run_onnx(session(export.proto), x)
    assert (y_onnx - y).abs().max() <= output_tolerance(packed, y)
    assert (y_onnx.argmax(1) == y.argmax(1)).float().mean() >= 0.98


@pytest.mark.skipif(not MNIST.is_dir(), reason="the mnist-t10k files are not there")
def test_lenet_on_real_mnist_images_within_one_step() -> None:
    from lowbit.data.mnist import idx_paths, read_idx_pair

    data = read_idx_pair(*idx_paths(MNIST, "t10k", "mnist-t10k"), "mnist-t10k")
    x = (data.x[:256].float() / 255.0 - 0.1307) / 0.3081
    args = zoo_args("lenet5")
    for plan in (Plan.uniform(2, 2), Plan.uniform(4, 4), mixed_plan(args)):
        model, packed = quantized(args, "dorefa", plan)
        export = to_integer_onnx(packed, "integer")
        with torch.no_grad():
            y = model(x)
        y_onnx = run_onnx(session(export.proto), x)
        assert (y_onnx - y).abs().max() <= output_tolerance(packed, y)
        assert (y_onnx.argmax(1) == y.argmax(1)).float().mean() >= 0.995


def test_residual_stream_is_listed_as_approximated() -> None:
    args = zoo_args("resnet20")
    model, packed = quantized(args, "dorefa", Plan.uniform(4, 4))
    fast, exact = to_integer_onnx(packed, "integer"), to_integer_onnx(packed, "exact")
    assert any("relu2" in t for t in fast.approximated) and exact.approximated == []
    assert all(k.kind == "integer" for n, k in fast.layers.items() if n not in ("conv1", "fc"))
    assert exact.layers["layer1_0.conv2"].kind == "float" and "residual" in exact.layers["layer1_0.conv2"].reason
    assert exact.layers["layer1_0.conv1"].kind == "integer" and exact.layers["layer1_0.conv1"].output == "codes"


def test_trained_resnet20_exact_graph_matches_on_digits() -> None:
    """A ResNet-20 w4a4 trained for a few steps on digits: the 'exact' graph agrees with the fake-quant model on
    the test split's argmax (>= 99.5%) and every integer layer's input codes are within one level (the int32 bias
    and the requantization multiplier are fitted together, lowbit.export.requant.fit_requantization; rounding the bias
    alone gave 98.6% and codes 2-5 levels off here)."""
    from lowbit.data.loader import ArrayLoader
    from lowbit.export.packed import pack_model
    from lowbit.nn import quantize_
    from lowbit.quant import QuantizerSpec
    from lowbit.runs.build import load_model_and_data

    args, data, _ = load_model_and_data("resnet20", "digits", width_mult=0.5)
    torch.manual_seed(0)
    model, spec, plan = args.build(), QuantizerSpec("dorefa"), Plan.uniform(4, 4)
    quantize_(model, plan, spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    steps = 0
    while steps < 120:
        for x, y in ArrayLoader(data.train, batch_size=64, shuffle=True, mean=data.mean, std=data.std):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps == 120:
                break
    model.eval()
    x = torch.cat([b[0] for b in ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)])
    with torch.no_grad():
        y = model(x)
    export = to_integer_onnx(pack_model(model, args, spec, plan), "exact")
    y_onnx, codes = run_with_codes(export, x)
    assert (y_onnx.argmax(1) == y.argmax(1)).float().mean() >= 0.995
    ref = model_input_codes(model, codes, x)
    assert len(codes) == 9  # block convs 1 on integer kernels (conv 2 writes the float residual stream)
    for name, got in codes.items():
        diff = np.abs(got.astype(np.float64) - ref[name])
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (name, diff.max(), (diff > 0).mean())


def test_default_graph_is_exact_for_quantized_models_and_float_for_float_ones(tmp_path: Path) -> None:
    """One default (lowbit.export.onnx_file) for the CLI and the API: a quantized model gets the exact integer-kernel
    graph, a float model the float graph; an unknown graph name is a clear error and writes nothing."""
    from lowbit.export import ExportError, pack_model
    from lowbit.export.onnx_file import DEFAULT_ONNX_KERNELS, resolve_kernels, write_onnx

    args = zoo_args("lenet5")
    model, packed = quantized(args, "dorefa", Plan.uniform(4, 4))
    assert DEFAULT_ONNX_KERNELS == "exact" and resolve_kernels(packed) == "exact"
    size, kernels = write_onnx(packed, tmp_path / "q.onnx")
    assert kernels == "exact" and size == (tmp_path / "q.onnx").stat().st_size
    x = inputs(args)
    with torch.no_grad():
        y = model(x)
    assert (run_onnx(session(tmp_path / "q.onnx"), x) - y).abs().max() <= output_tolerance(packed, y)
    from lowbit.quant import QuantizerSpec

    float_packed = pack_model(args.build().eval(), args, QuantizerSpec("none"), Plan.uniform())
    assert resolve_kernels(float_packed) == "float"
    with pytest.raises(ExportError, match="ONNX kernels must be one of"):
        write_onnx(packed, tmp_path / "bad.onnx", kernels="int4")
    assert not (tmp_path / "bad.onnx").exists()
