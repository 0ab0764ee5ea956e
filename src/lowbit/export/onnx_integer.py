"""ONNX export on ONNX Runtime's integer kernels: QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool.

The packed model (with its activation quantizers, ``PackedModel.float_module(activations=True)``)
is traced with ``torch.fx`` and lowered node by node (:class:`lowbit.export.onnx_graph.GraphBuilder`):

- a conv/linear layer with integer weights ``m`` that fit int8 (every quantizer and width except
  8-bit DoReFa/PACT) and quantized input codes ``a`` becomes ``QLinearConv`` (``QGemm`` of
  com.microsoft for Linear): uint8 codes (scale = the activation step, zero point 0) times int8
  ``m`` (the packed file's codes, bit for bit, times a code multiplier) with the per-output-channel scale and
  bias of the following batch norm folded in (:mod:`lowbit.export.bn_fold`; bias as int32 in accumulator units;
  where the output is the next layer's codes, the int32 bias, the float32 requantization multiplier and a
  per-channel code multiplier are chosen together so that ORT's rounding gives the fake-quant model's codes
  for every accumulator value, :func:`lowbit.export.requant.fit_requantization`);
- its output is written straight as the uint8 codes of the next layer's activation quantizer
  when every path from it reaches quantized layers of one grid through ReLU / MaxPool / Flatten /
  Dropout (they commute with a clamp-at-0 monotone quantizer): output scale = that step, zero
  point 0, so ORT's requantization rounds to the codes the fake-quant model rounds to, and the
  k-bit clamp is a uint8 ``Clip`` (:mod:`lowbit.export.onnx_graph`);
- a Linear whose output is a float tensor (the classifier) is a QGemm with float output (exact
  integer sums, then the scale) plus a float bias ``Add``.

Where the fake-quant model keeps a float tensor between quantized layers (ResNet's residual
stream, the input of global average pooling) there are two choices, the ``kernels`` argument:

- ``"integer"``: the tensor is carried in uint8 with a scale and zero point from its range on
  calibration inputs (``QLinearConv`` output, ``QLinearAdd``, ``QLinearGlobalAveragePool``), as
  ONNX Runtime's own static quantization does. Fast, but an approximation of the fake-quant model
  there (every 8-bit rounding can flip a downstream code); the tensors are listed in
  ``IntegerExport.approximated``.
- ``"exact"``: the convs writing such tensors compute in float (DequantizeLinear'd codes, exact
  fake-quant weights, float Conv), so the graph equals the fake-quant model up to float rounding.

Layers that cannot run on integer kernels compute in float and say why (``LayerKernel.reason``):
float weights, float (unquantized) input, and 8-bit DoReFa/PACT weights, whose 256 levels sit at
the odd multiples -255..255 of s/255 and need 9-bit integers (no int8 code with an integer zero
point holds them; no ORT kernel takes wider weights).
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from lowbit.export.bn_fold import FoldedLayer, code_multiplier, fits_int8, fold_float, fold_integer
from lowbit.export.errors import ExportError
from lowbit.export.onnx_graph import MS_DOMAIN, GraphBuilder, Val, approx_params
from lowbit.export.packed import PackedModel
from lowbit.export.requant import fit_requantization

INTEGER_KERNELS = ("integer", "exact")
INPUT_NAME, OUTPUT_NAME = "input", "output"
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
TRANSPARENT = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
INT32_MAX = 2**31 - 1


@dataclass
class LayerKernel:
    """How one conv/linear layer is written: ``integer`` (QLinearConv/QGemm) or ``float`` (Conv/Gemm)."""

    name: str
    kind: str
    op: str
    output: str  # "codes" (the next quantizer's exact codes), "uint8" (8-bit approximation) or "float"
    reason: str = ""


@dataclass
class IntegerExport:
    proto: object  # onnx.ModelProto
    layers: dict[str, LayerKernel]
    approximated: list[str] = field(default_factory=list)  # fx nodes carried as 8-bit approximations


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LAYERS) or super().is_leaf_module(m, qualname)


def _ranges(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(min, max) of every node's output on the calibration batch ``x``."""
    out: dict[str, tuple[float, float]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if isinstance(value, torch.Tensor) and value.numel():
                out[n.name] = (float(value.min()), float(value.max()))
            return value

    with torch.no_grad():
        Recorder(gm).run(x)
    return out


class _Lowering:
    def __init__(self, packed: PackedModel, kernels: str, calibration: torch.Tensor | None) -> None:
        self.packed, self.approx = packed, kernels == "integer"
        self.model = packed.float_module(activations=True)
        try:
            self.gm = fx.GraphModule(self.model, _Tracer().trace(self.model))
        except Exception as exc:  # fx raises many kinds for untraceable models
            raise ExportError(f"model {packed.args.name!r} cannot be traced with torch.fx: {exc}") from None
        self.ranges = _ranges(self.gm, calibration) if self.approx and calibration is not None else {}
        self.b = GraphBuilder()
        self.vals: dict[fx.Node, Val] = {}
        self.layers: dict[str, LayerKernel] = {}
        self.approximated: list[str] = []

    # ---- graph questions -------------------------------------------------------------------
    def module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def _grids(self, node: fx.Node):
        for user in node.users:
            mod = self.module(user)
            if isinstance(mod, TRANSPARENT) and user.args[0] is node:
                yield from self._grids(user)
            elif isinstance(mod, LAYERS) and user.args[0] is node and user.target in self.packed.acts:
                yield self.packed.acts[user.target]
            else:
                yield None

    def target(self, node: fx.Node):
        """The activation grid every consumer of ``node`` quantizes it to, or None."""
        grids = list(self._grids(node))
        return grids[0] if grids and all(g is not None and g == grids[0] for g in grids) else None

    def approx_out(self, node: fx.Node) -> tuple[float, int, fx.Node]:
        """uint8 (scale, zero) of an approximated output; a single ReLU user is absorbed (zero point 0)."""
        users = list(node.users)
        if len(users) == 1 and isinstance(self.module(users[0]), nn.ReLU):
            node = users[0]
        if node.name not in self.ranges:
            raise ExportError(f"no calibration range for {node.name!r}: pass calibration inputs")
        self.approximated.append(node.name)
        return (*approx_params(*self.ranges[node.name]), node)

    # ---- lowering ----------------------------------------------------------------------------
    def run(self) -> IntegerExport:
        for node in self.gm.graph.nodes:
            if node in self.vals:
                continue
            if node.op == "placeholder":
                self.vals[node] = Val(INPUT_NAME)
            elif node.op == "output":
                final = self.b.to_float(self.vals[node.args[0]], "output")
                self.b.nodes.append(self.b._helper.make_node("Identity", [final.name], [OUTPUT_NAME], name="output"))
            elif node.op == "call_module":
                self.call_module(node, self.module(node))
            elif node.op == "call_function" and node.target in (operator.add, torch.add):
                self.add(node)
            elif node.op == "call_function" and node.target is torch.flatten:
                x = self.vals[node.args[0]]
                self.vals[node] = Val(self.b.node("Flatten", [x.name], node.name, axis=1), x.dtype, x.scale, x.zero, x.grid)
            else:
                raise ExportError(f"the integer ONNX export does not handle {node.op} {node.target!r}")
        return IntegerExport(None, self.layers, self.approximated)

    def call_module(self, node: fx.Node, mod: nn.Module) -> None:
        x = self.vals[node.args[0]]
        b = self.b
        if isinstance(mod, LAYERS):
            return self.layer(node, mod, x)
        if isinstance(mod, (nn.Dropout, nn.Identity)):
            out = x
        elif isinstance(mod, nn.ReLU):
            if x.is_float:
                out = Val(b.node("Relu", [x.name], node.name))
            elif x.zero == 0:
                out = x  # uint8 with zero point 0 is already >= 0
            else:
                out = Val(b.node("Clip", [x.name, b.scalar(x.zero, np.uint8), b.scalar(255, np.uint8)], node.name),
                          "uint8", x.scale, x.zero)
        elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            dims = 1 if isinstance(mod, nn.MaxPool1d) else 2
            k, s, p, d = (_tuple(v, dims) for v in (mod.kernel_size, mod.stride or mod.kernel_size, mod.padding, mod.dilation))
            grid = self.target(node)
            if x.is_float and grid is not None:  # pool the codes (max commutes with the monotone quantizer): ORT
                x = b.to_codes(x, grid, node.name)  # would move the QuantizeLinear above a float pool anyway
            attrs = dict(kernel_shape=k, strides=s, pads=p + p, dilations=d, ceil_mode=int(mod.ceil_mode))
            out = Val(b.max_pool(x, node.name, attrs), x.dtype, x.scale, x.zero, x.grid)
        elif isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
            out = Val(b.node("Flatten", [x.name], node.name, axis=1), x.dtype, x.scale, x.zero, x.grid)
        elif isinstance(mod, POOLS) and set(_tuple(mod.output_size, 1)) == {1}:
            out = self.global_pool(node, x)
        elif isinstance(mod, NORMS):
            w, c = fold_float(torch.eye(mod.num_features), None, mod)  # a lone batch norm: per-channel affine
            shape = [1, -1] + [1] * (2 if isinstance(mod, nn.BatchNorm2d) else 1)
            xf = b.to_float(x, node.name).name
            mul = b.node("Mul", [xf, b.init(f"{node.target}.mult", np.diag(w).reshape(shape).astype(np.float32))], node.name)
            out = Val(b.node("Add", [mul, b.init(f"{node.target}.shift", c.reshape(shape))], node.name))
        else:
            raise ExportError(f"the integer ONNX export does not handle module {node.target!r} ({type(mod).__name__})")
        self.vals[node] = out

    def global_pool(self, node: fx.Node, x: Val) -> Val:
        b = self.b
        if x.is_float or (x.grid is None and not self.approx):
            return Val(b.node("GlobalAveragePool", [b.to_float(x, node.name).name], node.name))
        grid = self.target(node)
        if grid is not None:
            scale, zero, bound = grid.step, 0, node
        elif self.approx:
            scale, zero, bound = self.approx_out(node)
        else:
            return Val(b.node("GlobalAveragePool", [b.to_float(x, node.name).name], node.name))
        q = b.node("QLinearGlobalAveragePool", [x.name, *b.qparams(x), b.scalar(scale, np.float32), b.scalar(zero, np.uint8)],
                   node.name, domain=MS_DOMAIN, channels_last=0)
        out = b.clamp_codes(q, grid, node.name) if grid is not None else Val(q, "uint8", scale, zero)
        self.vals[bound] = out
        return out

    def add(self, node: fx.Node) -> None:
        b = self.b
        left, right = (self.vals[a] for a in node.args[:2])
        if not self.approx or (left.is_float and right.is_float):  # float operands (float convs): add in float
            self.vals[node] = Val(b.node("Add", [b.to_float(left, node.name).name, b.to_float(right, node.name).name], node.name))
            return
        ins = []
        for arg, val in zip(node.args[:2], (left, right)):
            if val.is_float:  # one float operand (a float layer's output) joins the 8-bit sum
                scale, zero = approx_params(*self.ranges[arg.name])
                val = Val(b.node("QuantizeLinear", [val.name, b.scalar(scale, np.float32), b.scalar(zero, np.uint8)],
                                 f"{arg.name}/QuantizeLinear"), "uint8", scale, zero)
                self.approximated.append(arg.name)
            ins += [val.name, *b.qparams(val)]
        grid, grids = self.target(node), set(self._grids(node))
        codes = None
        if grid is None and len(grids - {None}) == 1:  # quantized layers and float paths read the sum:
            (shared,) = grids - {None}  # one QLinearAdd writes their codes directly, one the 8-bit sum
            q = b.node("QLinearAdd", [*ins, b.scalar(shared.step, np.float32), b.scalar(0, np.uint8)], f"{node.name}_codes",
                       domain=MS_DOMAIN)
            codes = b.clamp_codes(q, shared, f"{node.name}_codes")
        scale, zero, bound = (grid.step, 0, node) if grid is not None else self.approx_out(node)
        q = b.node("QLinearAdd", [*ins, b.scalar(scale, np.float32), b.scalar(zero, np.uint8)], node.name, domain=MS_DOMAIN)
        out = b.clamp_codes(q, grid, node.name) if grid is not None else Val(q, "uint8", scale, zero, codes=codes)
        self.vals[bound] = self.vals[node] = out

    def layer(self, node: fx.Node, mod: nn.Module, x: Val) -> None:
        name = node.target
        enc, grid = self.packed.weights.get(f"{name}.weight"), self.packed.acts.get(name)
        users = list(node.users)
        bn_node = users[0] if len(users) == 1 and isinstance(self.module(users[0]), NORMS) else None
        bn = self.module(bn_node) if bn_node is not None else None
        head = bn_node or node
        target, linear = self.target(head), isinstance(mod, nn.Linear)
        reason = ""
        if enc is None:
            reason = "float weights"
        elif grid is None:
            reason = "float input (its activations are not quantized)"
        elif not fits_int8(enc):
            low, high = enc.grid.int_range()
            reason = f"{enc.grid.bits}-bit {enc.grid.rule} weights are integers {low}..{high} (9 bits); no int8 kernel holds them"
        elif target is None and not linear and not self.approx:  # ConvInteger (+ float scale) measured 5x slower
            reason = "its output is a float tensor of the model (residual add or average pool); exact only in float"
        folded = fold_integer(enc, mod.bias, bn, code_multiplier(enc, grid.n)) if not reason else None
        if folded is not None and not np.all(np.abs(folded.scale) > 0):
            reason, folded = "a zero batch-norm scale", None
        if folded is None:
            self.vals[head] = self.float_layer(node, mod, x, enc, grid, bn)
            self.layers[name] = LayerKernel(name, "float", "Gemm" if linear else "Conv", "float", reason)
            return
        x = self.b.to_codes(x, grid, name)
        if target is not None:
            out = (target.step, 0, head)
        elif linear:
            out = None  # float output
        else:
            out = self.approx_out(head)
        self.vals[out[2] if out else head] = val = self.integer_layer(name, mod, x, folded, out, target)
        self.vals.setdefault(head, val)
        kind = "codes" if target is not None else "float" if out is None else "uint8"
        self.layers[name] = LayerKernel(name, "integer", "QGemm" if linear else "QLinearConv", kind)

    def integer_layer(self, name: str, mod: nn.Module, x: Val, folded: FoldedLayer, out, grid) -> Val:
        b = self.b
        w_scale = folded.scale.astype(np.float32)
        channels = len(w_scale)
        ins = [x.name, *b.qparams(x), None, None, b.init(f"{name}.weight_zero_point", np.zeros(channels, np.int8))]
        if out is None or grid is None:
            ins[3:5] = b.init(f"{name}.weight_q", folded.codes), b.init(f"{name}.weight_scale", w_scale)
        if out is None:  # QGemm, float output: exact sums times the scale, then the float bias
            y = b.node("QGemm", ins, name, domain=MS_DOMAIN, transB=1)
            return Val(b.node("Add", [y, b.init(f"{name}.bias_folded", folded.bias.astype(np.float32))], f"{name}/bias"))
        scale, zero = out[0], out[1]
        if grid is not None:  # exact codes: weights, bias and multiplier chosen together (lowbit.export.requant)
            codes, bias, w_scale = fit_requantization(folded, grid.n, float(x.scale), float(scale), x.grid.n)
            ins[3:5] = b.init(f"{name}.weight_q", codes), b.init(f"{name}.weight_scale", w_scale)
        else:  # an 8-bit approximation: the nearest integer bias
            bias = np.round(folded.bias / (float(x.scale) * folded.scale))
        if np.abs(bias).max(initial=0) > INT32_MAX:
            raise ExportError(f"layer {name!r}: its bias does not fit int32 accumulator units")
        tail = [b.scalar(scale, np.float32), b.scalar(zero, np.uint8)]
        bias_name = b.init(f"{name}.bias_q", bias.astype(np.int32))
        if isinstance(mod, nn.Linear):
            q = b.node("QGemm", [*ins, bias_name, *tail], name, domain=MS_DOMAIN, transB=1)
        else:
            dims = mod.weight.dim() - 2
            q = b.node("QLinearConv", [*ins, *tail, bias_name], name, strides=_tuple(mod.stride, dims),
                       pads=list(_tuple(mod.padding, dims)) * 2, dilations=_tuple(mod.dilation, dims), group=mod.groups,
                       kernel_shape=list(mod.weight.shape[2:]))
        return b.clamp_codes(q, grid, name) if grid is not None else Val(q, "uint8", scale, zero)

    def float_layer(self, node: fx.Node, mod: nn.Module, x: Val, enc, grid, bn) -> Val:
        b, name = self.b, node.target
        if grid is not None:
            x = b.to_codes(x, grid, name)
        weight = enc.dequantize() if enc is not None else self.packed.floats[f"{name}.weight"]
        if not x.is_float and x.zero == 0:  # codes: Cast alone, their step folded into the weights (one Mul less)
            xf = b.node("Cast", [x.name], f"{name}/Cast", to=1)  # TensorProto.FLOAT
            weight = weight.double() * float(x.scale)
        else:
            xf = b.to_float_plain(x, name).name
        w, c = fold_float(weight, mod.bias, bn)
        ins = [xf, b.init(f"{name}.weight", w), b.init(f"{name}.bias", c)]
        if isinstance(mod, nn.Linear):
            return Val(b.node("Gemm", ins, name, transB=1))
        if isinstance(mod.padding, str):
            raise ExportError(f"layer {name!r}: string padding is not supported")
        dims = mod.weight.dim() - 2
        return Val(b.node("Conv", ins, name, strides=_tuple(mod.stride, dims), pads=list(_tuple(mod.padding, dims)) * 2,
                          dilations=_tuple(mod.dilation, dims), group=mod.groups, kernel_shape=list(mod.weight.shape[2:])))


def _tuple(value, dims: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * dims


def to_integer_onnx(packed: PackedModel, kernels: str = "integer", calibration: torch.Tensor | None = None,
                    opset: int = 21) -> IntegerExport:
    """The integer-kernel ONNX graph of ``packed`` (see the module docstring) and how each layer runs.

    ``calibration``: inputs whose ranges set the 8-bit scales of approximated tensors
    (``kernels="integer"`` only; default 64 seeded N(0, 1) inputs)."""
    import onnx

    from lowbit.export.onnx_export import example_input

    if kernels not in INTEGER_KERNELS:
        raise ExportError(f"kernels must be one of {', '.join(INTEGER_KERNELS)}, got {kernels!r}")
    if calibration is None and kernels == "integer":
        shape = example_input(packed).shape[1:]
        calibration = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
    lowering = _Lowering(packed, kernels, calibration)
    result = lowering.run()
    proto = lowering.b.model(INPUT_NAME, ["batch", *example_input(packed).shape[1:]], OUTPUT_NAME,
                             ["batch", packed.args.num_classes], opset)
    header = packed.header()
    types = {f"{k.name}.weight": "INT8" for k in result.layers.values() if k.kind == "integer"}
    header["onnx"] = {"opset": opset, "kernels": kernels, "types": types,
                      "layers": {n: asdict(k) for n, k in result.layers.items()}, "approximated": result.approximated}
    onnx.helper.set_model_props(proto, {"lowbit": json.dumps(header, separators=(",", ":"))})
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise ExportError(f"the integer ONNX graph does not validate: {exc}") from None
    result.proto = proto
    return result
