"""A small ONNX graph builder for the integer export: tensors as float or uint8 values, and the
conversions between them (QuantizeLinear, DequantizeLinear, the k-bit clamp).

A value is ``float`` (a float32 tensor) or ``uint8`` with a scale and zero point (``x ≈ scale *
(q - zero)``). A uint8 value with a ``grid`` holds the exact codes of an activation quantizer
(zero point 0, codes ``0 .. 2**k - 1``); one without is an 8-bit approximation of a float tensor
(:mod:`lowbit.export.onnx_integer` says where those occur).

The k-bit clamp: ``QuantizeLinear`` to uint8 saturates at 0 and 255, which is the clamp of an
8-bit quantizer; below 8 bits a uint8 ``Clip(q, 0, 2**k - 1)`` follows it (ORT's integer Clip,
which its NHWC layout transformer keeps between QLinearConv nodes without extra transposes).
Clamping the codes after rounding equals rounding after clamping, as rounding is monotone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.export.grids import ActGrid

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class Val:
    """One tensor of the graph being built."""

    name: str
    dtype: str = "float"  # "float" or "uint8"
    scale: float = 1.0
    zero: int = 0
    grid: ActGrid | None = None  # uint8 codes of this activation grid, exactly
    codes: Val | None = None  # the same tensor already written as the codes of ``codes.grid`` (one rounding)

    @property
    def is_float(self) -> bool:
        return self.dtype == "float"


def f32(value: float) -> np.float32:
    return np.float32(value)


class GraphBuilder:
    """Nodes and initializers in order; unique names derived from the layer names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def init(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.inits.append(self._numpy.from_array(np.asarray(array), name))
        return name

    def scalar(self, value, dtype) -> str:
        """A shared scalar constant (scales, zero points, clip bounds)."""
        key = (np.dtype(dtype).str, np.asarray(value, dtype).tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{np.dtype(dtype).name}_{len(self._consts)}", np.asarray(value, dtype))
        return self._consts[key]

    def node(self, op: str, inputs: list[str], name: str, domain: str | None = None, **attrs) -> str:
        """Append a node with one output, named after ``name``; return the output name."""
        out = self.unique(f"{name}_out")
        self.nodes.append(self._helper.make_node(op, inputs, [out], name=self.unique(name), domain=domain, **attrs))
        return out

    # ---- conversions ---------------------------------------------------------------------
    def qparams(self, val: Val) -> list[str]:
        """[scale, zero point] inputs of a uint8 value."""
        return [self.scalar(val.scale, np.float32), self.scalar(val.zero, np.uint8)]

    def to_float(self, val: Val, name: str) -> Val:
        if val.is_float:
            return val
        return Val(self.node("DequantizeLinear", [val.name, *self.qparams(val)], f"{name}/DequantizeLinear"))

    def to_float_plain(self, val: Val, name: str) -> Val:
        """Like :meth:`to_float` with Cast and Mul (and Sub) instead of DequantizeLinear: a float layer reading it
        is then no ``DequantizeLinear -> Conv/Gemm -> QuantizeLinear`` group, which ONNX Runtime would turn into an
        integer kernel by quantizing the float weights itself (changing them)."""
        if val.is_float:
            return val
        x = self.node("Cast", [val.name], f"{name}/Cast", to=1)  # TensorProto.FLOAT
        if val.zero:
            x = self.node("Sub", [x, self.scalar(val.zero, np.float32)], f"{name}/Sub")
        return Val(self.node("Mul", [x, self.scalar(val.scale, np.float32)], f"{name}/Mul"))

    def clamp_codes(self, source: str, grid: ActGrid, name: str) -> Val:
        """The k-bit clamp on uint8 codes (nothing at 8 bits, where the uint8 saturation is the clamp)."""
        if grid.n < 255:
            source = self.node("Clip", [source, self.scalar(0, np.uint8), self.scalar(grid.n, np.uint8)], f"{name}/Clip")
        return Val(source, "uint8", grid.step, 0, grid)

    def to_codes(self, val: Val, grid: ActGrid, name: str) -> Val:
        """The activation codes of ``grid`` for ``val``: as is when already there, else quantize (and clamp)."""
        if val.grid == grid:
            return val
        if val.codes is not None and val.codes.grid == grid:
            return val.codes
        source = self.to_float(val, name).name
        q = self.node("QuantizeLinear", [source, self.scalar(grid.step, np.float32), self.scalar(0, np.uint8)],
                      f"{name}/QuantizeLinear")
        return self.clamp_codes(q, grid, name)

    def max_pool(self, val: Val, name: str, attrs: dict) -> str:
        """MaxPool; on uint8 as ``NhwcMaxPool`` (com.microsoft) between two Transposes, which ORT's layout
        optimizer cancels against the NHWC QLinearConv around it (its NCHW uint8 MaxPool measured 6-12x slower
        than the float model's on LeNet-5)."""
        dims = len(attrs["kernel_shape"])
        if val.is_float or dims != 2:  # (2-D only: the pools of the zoo's uint8 chains)
            return self.node("MaxPool", [val.name], name, **attrs)
        to_nhwc = self.node("Transpose", [val.name], f"{name}/to_nhwc", perm=[0, *range(2, 2 + dims), 1])
        pooled = self.node("NhwcMaxPool", [to_nhwc], name, domain=MS_DOMAIN, **attrs)
        return self.node("Transpose", [pooled], f"{name}/to_nchw", perm=[0, dims + 1, *range(1, dims + 1)])

    def model(self, input_name: str, input_shape: list, output: str, output_shape: list, opset: int):
        """The ModelProto: one float input and one float output, opsets ``opset`` and com.microsoft 1."""
        from onnx import TensorProto

        helper = self._helper
        graph = helper.make_graph(self.nodes, "lowbit_integer",
                                  [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
                                  self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="lowbit")
        proto.ir_version = helper.find_min_ir_version_for([proto.opset_import[0]])
        return proto


def approx_params(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of uint8 covering ``[min(low, 0), max(high, 0)]`` (0 exactly representable)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0:
        return 1.0, 0
    scale = float(np.float32((high - low) / 255.0))
    zero = int(np.clip(round(-low / scale), 0, 255))
    return scale, zero
