"""ONNX export: a QDQ graph (QuantizeLinear / DequantizeLinear) checked in ONNX Runtime.

How the graph is made: the float model with the exact fake-quantized weights
(``PackedModel.float_module()``) goes through PyTorch's TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``, opset 20, initializers kept under their state-dict
names), ``onnx.version_converter`` lifts it to the target opset (default 21), then:

- every quantized weight initializer ``W`` is replaced by an integer initializer ``W_q``
  holding the grid's integer values ``m`` (see :mod:`lowbit.export.grids`), a float32
  ``W_scale = S / d`` and a zero ``W_zero_point``, and a node
  ``W = DequantizeLinear(W_q, W_scale, W_zero_point)``;
- the data input ``X`` of every layer whose activations are quantized goes through
  ``QuantizeLinear(X, step, 0) -> DequantizeLinear(step, 0)`` in UINT8: QuantizeLinear rounds
  half to even (as ``torch.round``) and saturates to 0..255, which clips at 0 and, for 8-bit
  activations, at the top level; below 8 bits ``Min(X, hi)`` (``hi`` = the top level) caps it
  first.

Integer types (the rule for every width). A weight is stored in the narrowest signed ONNX
integer type that holds its values ``m`` and that the opset defines: INT2 (opset >= 25,
``m`` in -2..1: binary, ternary, 2-bit LSQ and WRPN), INT4 (opset >= 21, -8..7: up to 4-bit LSQ,
WRPN, TWN and up to 3-bit DoReFa/PACT), INT8 (-128..127: everything up to 8 bits except
8-bit DoReFa/PACT), INT16 (opset >= 21: 8-bit DoReFa/PACT, whose 256 levels sit at the odd
multiples -255..255 of s/255, so no 8-bit integer with an integer zero point holds them).
Widths without a type of their own (3, 5, 6, 7 bits) use the next wider type, the values
unchanged, so the grid stays the quantizer's. ``narrow=False`` stores every weight as INT8
(INT16 for 8-bit DoReFa/PACT). Activations are always UINT8 (codes 0..2**k - 1): ONNX Runtime
1.32 accepts UINT4/UINT2 activation QDQ in a bare graph, but its default graph optimizations
break on them (the Clip/QuantizeLinear fusion rejects a 4-bit zero point; QDQ propagation moves
a UINT4 pair across MaxPool, which has no 4-bit kernel), so 4-bit activations would give files
that fail to load with default session options.

Accuracy: ``DequantizeLinear`` gives ``fl32(m * fl32(S / d))``: equal to the fake-quantized
weight when ``d = 1`` (binary, ternary, LSQ) and within a few float32 ulps otherwise (the
fake-quant computes ``fl32(fl32(S * m) / d)``). Outputs in ONNX Runtime are checked against
PyTorch with the tolerances of :mod:`lowbit.export.intrun`.

Running the file: any ONNX Runtime session works, but note that ONNX Runtime 1.32 fuses a 4-bit
``DequantizeLinear -> MatMul`` (a bias-free Linear) into ``MatMulNBits``, whose default accuracy
level 4 quantizes the activations to int8 on the fly (about 1% output error on VGG-11). Set the
session config entry ``session.qdq_matmulnbits_accuracy_level`` to ``"1"`` (float32), as
:func:`onnx_session` does, to get the graph's own numerics.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.export.errors import ExportError
from lowbit.export.grids import ActGrid, EncodedWeight
from lowbit.export.packed import PackedModel
from lowbit.io import atomic_write_bytes
from lowbit.models import model_info

DEFAULT_OPSET = 21
MIN_OPSET = 21
MAX_OPSET = 25
TORCH_OPSET = 20  # the highest opset PyTorch's TorchScript exporter writes
INPUT_NAME, OUTPUT_NAME = "input", "output"


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ExportError("ONNX export needs the 'onnx' package: pip install 'lowbit[export]'") from None
    return onnx


@dataclass(frozen=True)
class IntType:
    name: str
    low: int
    high: int
    min_opset: int


SIGNED = (IntType("INT2", -2, 1, 25), IntType("INT4", -8, 7, 21), IntType("INT8", -128, 127, 1),
          IntType("INT16", -32768, 32767, 21))
UNSIGNED = (IntType("UINT2", 0, 3, 25), IntType("UINT4", 0, 15, 21), IntType("UINT8", 0, 255, 1))
NARROW = {"INT2", "INT4", "UINT2", "UINT4"}


def pick_type(low: int, high: int, opset: int, narrow: bool = True, signed: bool = True) -> IntType:
    """The narrowest ONNX integer type holding ``low..high`` at ``opset`` (see the module docstring)."""
    for kind in SIGNED if signed else UNSIGNED:
        if kind.min_opset <= opset and kind.low <= low and high <= kind.high and (narrow or kind.name not in NARROW):
            return kind
    raise ExportError(f"no ONNX integer type at opset {opset} holds the values {low}..{high}")


def example_input(packed: PackedModel, batch: int = 1) -> torch.Tensor:
    """A zero input of the shape the stored model takes."""
    args = packed.args
    side = (args.input_size,) * (2 if model_info(args.name).kind == "image" else 1)
    return torch.zeros(batch, args.in_channels, *side)


def _torch_export(packed: PackedModel, opset: int):
    onnx = _onnx()
    from onnx import version_converter

    model = packed.float_module()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(model, (example_input(packed),), buffer, dynamo=False, opset_version=TORCH_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              keep_initializers_as_inputs=True,  # keeps every parameter under its own name
                              do_constant_folding=False)
        except Exception as exc:  # torch raises many kinds here
            raise ExportError(f"torch.onnx.export failed for {packed.args.name!r}: {exc}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    proto = version_converter.convert_version(proto, opset)
    graph = proto.graph
    names = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    return proto


def _numpy_type(kind: IntType):
    import ml_dtypes  # an onnx dependency: numpy types for the 2- and 4-bit integers

    return {"INT2": ml_dtypes.int2, "INT4": ml_dtypes.int4, "INT8": np.int8, "INT16": np.int16}[kind.name]


def _weight_nodes(key: str, enc: EncodedWeight, opset: int, narrow: bool, output: str, transpose: bool):
    from onnx import TensorProto, helper, numpy_helper

    kind = pick_type(*enc.grid.int_range(), opset, narrow)
    dtype = getattr(TensorProto, kind.name)
    values = enc.int_values().numpy().astype(np.int64)
    if transpose:  # a bias-free Linear: MatMul takes the weight as (in, out)
        values = np.ascontiguousarray(values.T)
    q = numpy_helper.from_array(values.astype(_numpy_type(kind)), f"{key}_q")  # raw bytes, 2/4-bit packed
    scale = helper.make_tensor(f"{key}_scale", TensorProto.FLOAT, [], [np.float32(enc.grid.step)])
    zero = helper.make_tensor(f"{key}_zero_point", dtype, [], [0])
    node = helper.make_node("DequantizeLinear", [q.name, scale.name, zero.name], [output], name=f"{key}/DequantizeLinear")
    return [q, scale, zero], node, kind


def _act_nodes(layer: str, grid: ActGrid, source: str, opset: int, narrow: bool):
    from onnx import TensorProto, helper

    kind = pick_type(0, grid.n, opset, narrow=False, signed=False)  # UINT8: see the module docstring
    dtype = getattr(TensorProto, kind.name)
    prefix = f"{layer}.input"
    inits = [helper.make_tensor(f"{prefix}_scale", TensorProto.FLOAT, [], [np.float32(grid.step)]),
             helper.make_tensor(f"{prefix}_zero_point", dtype, [], [0])]
    nodes = []
    if kind.high > grid.n:  # the type is wider than k bits: cap at the top level first
        inits.append(helper.make_tensor(f"{prefix}_high", TensorProto.FLOAT, [], [np.float32(grid.high)]))
        nodes.append(helper.make_node("Min", [source, inits[-1].name], [f"{prefix}_capped"], name=f"{prefix}/Min"))
        source = f"{prefix}_capped"
    nodes += [helper.make_node("QuantizeLinear", [source, inits[0].name, inits[1].name], [f"{prefix}_q"],
                               name=f"{prefix}/QuantizeLinear"),
              helper.make_node("DequantizeLinear", [f"{prefix}_q", inits[0].name, inits[1].name], [f"{prefix}_dq"],
                               name=f"{prefix}/DequantizeLinear")]
    return inits, nodes, kind


def _layer_node(nodes: list, weight: str) -> tuple[int, int | None]:
    """Index of the Conv / Gemm / MatMul node using ``weight``, and of the Transpose in between (MatMul) or None."""
    users = [i for i, n in enumerate(nodes) if weight in n.input]
    if len(users) == 1 and nodes[users[0]].op_type == "Transpose":
        transpose = users[0]
        out = nodes[transpose].output[0]
        users = [i for i, n in enumerate(nodes) if out in n.input]
        perm = [list(a.ints) for a in nodes[transpose].attribute if a.name == "perm"]
        if len(users) == 1 and nodes[users[0]].op_type == "MatMul" and nodes[users[0]].input[1] == out and perm == [[1, 0]]:
            return users[0], transpose
    if len(users) == 1 and nodes[users[0]].op_type in ("Conv", "Gemm"):
        return users[0], None
    raise ExportError(f"cannot find the single Conv/Gemm/MatMul using {weight!r} in the exported graph "
                      f"(found {[nodes[i].op_type for i in users]})")


def to_onnx(packed: PackedModel, opset: int = DEFAULT_OPSET, narrow: bool = True):
    """The QDQ ``onnx.ModelProto`` of a packed model (see the module docstring)."""
    onnx = _onnx()
    from onnx import helper

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"ONNX opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    proto = _torch_export(packed, opset)
    graph = proto.graph
    nodes = []
    for node in graph.node:
        nodes.append(onnx.NodeProto())
        nodes[-1].CopyFrom(node)
    del graph.node[:]
    by_name = {init.name: init for init in graph.initializer}
    layers = [n for n in packed.layers if f"{n}.weight" in packed.weights or n in packed.acts]
    found = {name: _layer_node(nodes, f"{name}.weight") for name in layers}
    front, before, dropped, types = [], {}, set(), {}
    for name in layers:
        index, transpose = found[name]
        key = f"{name}.weight"
        if key in packed.weights:
            if key not in by_name:
                raise ExportError(f"weight {key!r} is not an initializer of the exported graph")
            graph.initializer.remove(by_name[key])
            output = nodes[transpose].output[0] if transpose is not None else key
            inits, node, kind = _weight_nodes(key, packed.weights[key], opset, narrow, output, transpose is not None)
            graph.initializer.extend(inits)
            front.append(node)
            types[key] = kind.name
            if transpose is not None:
                dropped.add(transpose)
        if name in packed.acts:
            node = nodes[index]
            inits, quant, kind = _act_nodes(name, packed.acts[name], node.input[0], opset, narrow)
            graph.initializer.extend(inits)
            node.input[0] = quant[-1].output[0]
            before[index] = quant
            types[f"{name}.input"] = kind.name
    ordered = list(front)
    for i, node in enumerate(nodes):
        if i not in dropped:
            ordered += [*before.get(i, []), node]
    graph.node.extend(ordered)
    proto.ir_version = max(proto.ir_version, helper.find_min_ir_version_for(list(proto.opset_import)))
    proto.producer_name = "lowbit"
    header = packed.header()
    header["onnx"] = {"opset": opset, "narrow": narrow, "types": types}
    helper.set_model_props(proto, {"lowbit": json.dumps(header, separators=(",", ":"))})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise ExportError(f"the exported ONNX graph does not validate: {exc}") from None
    return proto


def export_onnx(packed: PackedModel, path: str | Path, opset: int = DEFAULT_OPSET, narrow: bool = True) -> int:
    """Write the QDQ ONNX file atomically; return its size in bytes."""
    data = to_onnx(packed, opset, narrow).SerializeToString()
    atomic_write_bytes(Path(path), data)
    return len(data)


def onnx_session(model, threads: int = 1, optimized_path: str | Path | None = None):
    """An ONNX Runtime CPU session for a ModelProto, bytes or a path (``threads`` intra-op threads);
    ``optimized_path``: where ORT writes the graph it optimized (to read which kernels it runs)."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - depends on the environment
        raise ExportError("running ONNX needs 'onnxruntime': pip install 'lowbit[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ORT fuses DequantizeLinear(4-bit) -> MatMul into MatMulNBits, which by default (accuracy level
    # 4) quantizes the activations to int8 on the fly: ~1% output error. Level 1 computes in float32.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    source = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {INPUT_NAME: x.detach().float().numpy()})[0])


def onnx_header(model) -> dict | None:
    """The lowbit header stored in an ONNX model's metadata (None if absent or unreadable)."""
    for prop in model.metadata_props:
        if prop.key == "lowbit":
            try:
                return json.loads(prop.value)
            except ValueError:
                return None
    return None


def dequantized_weights(model) -> dict[str, torch.Tensor]:
    """Float32 values of every DequantizeLinear'd initializer of an ONNX model, by output name (numpy reference)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.int64)
            out[node.output[0]] = torch.from_numpy(((q - zero).astype(np.float32) * scale).astype(np.float32))
    return out
