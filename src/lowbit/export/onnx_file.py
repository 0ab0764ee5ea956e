"""Writing a packed model as an ONNX file: which graph, and the one default (issue 17).

- ``exact`` (the default for a model with quantized layers): ONNX Runtime's integer kernels
  (QLinearConv, QGemm) wherever that equals the fake-quant model, float convs where the model
  keeps a float tensor (ResNet's residual stream, the input of global average pooling)
  (:mod:`lowbit.export.onnx_integer`);
- ``integer``: integer kernels everywhere they exist, those float tensors in calibrated 8 bits
  (faster on ResNets, an approximation there);
- ``float``: the QuantizeLinear/DequantizeLinear graph computing in float (:mod:`lowbit.export.onnx_export`),
  the default for a float model (nothing to run on integer kernels).

The CLI (``lowbit export``, ``lowbit bench``) and the Python API read the default from here.
"""

from __future__ import annotations

from pathlib import Path

from lowbit.export.errors import ExportError
from lowbit.export.packed import PackedModel

ONNX_KERNELS = ("exact", "integer", "float")
DEFAULT_ONNX_KERNELS = "exact"


def resolve_kernels(packed: PackedModel, kernels: str | None = None) -> str:
    """``kernels`` if given (checked), else :data:`DEFAULT_ONNX_KERNELS`, or ``float`` for a model without
    quantized weights."""
    if kernels is not None:
        if kernels not in ONNX_KERNELS:
            raise ExportError(f"ONNX kernels must be one of {', '.join(ONNX_KERNELS)}, got {kernels!r}")
        return kernels
    return DEFAULT_ONNX_KERNELS if packed.weights else "float"


def write_onnx(packed: PackedModel, out: str | Path, kernels: str | None = None, opset: int | None = None,
               narrow: bool = True) -> tuple[int, str]:
    """Write ``packed`` as ONNX to ``out`` (atomically); return (bytes written, kernels used).

    ``narrow`` applies to the float graph only (INT2/INT4 weight types where the opset has them)."""
    from lowbit.export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export_onnx

    kernels = resolve_kernels(packed, kernels)
    opset = opset or DEFAULT_OPSET
    if kernels == "float":
        return export_onnx(packed, out, opset=opset, narrow=narrow), kernels
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"ONNX opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    from lowbit.export.onnx_integer import to_integer_onnx
    from lowbit.io import atomic_write_bytes

    data = to_integer_onnx(packed, kernels, opset=opset).proto.SerializeToString()
    atomic_write_bytes(Path(out), data)
    return len(data), kernels
