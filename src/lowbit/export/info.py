"""What a packed or ONNX file holds: per layer bits, parameters and bytes, and the totals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.export.errors import ExportError
from lowbit.export.pack import packed_nbytes
from lowbit.export.packed import is_packed_file, read_packed


@dataclass
class LayerRow:
    name: str
    weight_bits: int
    act_bits: int
    params: int
    stored_bytes: int  # bytes of the weight as stored (packed codes, ONNX integer tensor or float32)
    storage: str  # "packed", "float32", or the ONNX type name

    @property
    def float_bytes(self) -> int:
        return 4 * self.params

    @property
    def compression(self) -> float:
        return self.float_bytes / self.stored_bytes if self.stored_bytes else math.inf


@dataclass
class FileInfo:
    path: str
    kind: str  # "packed" or "onnx"
    model: str
    quantizer: str
    layers: list[LayerRow] = field(default_factory=list)
    file_bytes: int = 0
    float32_bytes: int = 0  # the same model with every tensor in float32
    other_float_bytes: int = 0  # biases, batch norm, activation parameters
    floor_bytes: int | None = None  # packed: costs.size_bytes's floor
    onnx_kernels: str | None = None  # ONNX: "integer", "exact" or None (the float-compute QDQ graph)
    ort_kernels: str | None = None  # ONNX: the op types of ONNX Runtime's optimized graph, summarized
    float_layers: dict[str, str] | None = None  # ONNX integer graphs: layers computed in float, and why
    approximated: list[str] | None = None  # ONNX integer graphs: float tensors carried in 8 bits

    @property
    def compression(self) -> float:
        return self.float32_bytes / self.file_bytes if self.file_bytes else math.inf


def describe(path: str | Path) -> FileInfo:
    """Read a packed (``lowbit-packed``) or ONNX file written by lowbit and summarize it."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"file not found: {path}")
    if path.is_dir():
        raise ExportError(f"expected a packed or ONNX file, got a folder: {path}")
    if is_packed_file(path):
        return _describe_packed(path)
    return _describe_onnx(path)


def _describe_packed(path: Path) -> FileInfo:
    packed = read_packed(path)
    sizes = packed.sizes()
    rows = []
    for name, bits in packed.layers.items():
        key = f"{name}.weight"
        if key in packed.weights:
            enc = packed.weights[key]
            count = enc.codes.numel()
            rows.append(LayerRow(name, bits.weight, bits.act, count, packed_nbytes(count, enc.grid.bits), "packed"))
        elif key in packed.floats:
            count = packed.floats[key].numel()
            rows.append(LayerRow(name, bits.weight, bits.act, count, 4 * count, "float32"))
    layer_float = sum(r.stored_bytes for r in rows if r.storage == "float32")
    return FileInfo(str(path), "packed", packed.args.name, packed.spec.name if packed.spec else "none", rows,
                    sizes["file"], sizes["float32"], sizes["floats"] - layer_float, sizes["floor"])


def _describe_onnx(path: Path) -> FileInfo:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # pragma: no cover - depends on the environment
        raise ExportError(f"{path} is not a packed file, and reading ONNX needs 'onnx' "
                          "(pip install 'lowbit[export]')") from None
    from lowbit.export.onnx_export import onnx_header

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportError(f"{path} is neither a lowbit packed file nor an ONNX model ({type(exc).__name__})") from None
    header = onnx_header(model)
    if header is None or "onnx" not in header:
        raise ExportError(f"{path} is an ONNX model but was not written by lowbit (no 'lowbit' metadata)")
    inits = {i.name: i for i in model.graph.initializer}
    numel = {name: math.prod(i.dims) for name, i in inits.items()}
    types = header["onnx"]["types"]
    rows, layer_names = [], set()
    for name, bits in header["layers"].items():
        key = f"{name}.weight"
        if f"{key}_q" in inits:
            q = inits[f"{key}_q"]
            stored = len(q.raw_data) if q.raw_data else numpy_helper.to_array(q).nbytes
            rows.append(LayerRow(name, bits["weight_bits"], bits["act_bits"], numel[f"{key}_q"], stored, types[key]))
            layer_names |= {f"{key}_q", f"{key}_scale", f"{key}_zero_point"}
        elif key in inits:
            rows.append(LayerRow(name, bits["weight_bits"], bits["act_bits"], numel[key], 4 * numel[key], "float32"))
            layer_names.add(key)
    quant_params = {n for n in inits if n.endswith(("_scale", "_zero_point", "_high", "bias_q")) or n.startswith("const_")}
    others = sum(4 * numel[n] for n in inits if n not in layer_names and n not in quant_params)
    float32 = 4 * sum(r.params for r in rows) + others
    info = FileInfo(str(path), "onnx", header["model"]["name"], (header.get("quantizer") or {}).get("name", "none"),
                    rows, path.stat().st_size, float32, others)
    onnx_head = header["onnx"]
    info.onnx_kernels = onnx_head.get("kernels")
    info.float_layers = {n: k["reason"] for n, k in onnx_head.get("layers", {}).items() if k.get("kind") == "float"}
    info.approximated = list(onnx_head.get("approximated", []))
    try:
        from lowbit.export.speed import kernel_summary, ort_kernels

        info.ort_kernels = kernel_summary(ort_kernels(model))
    except (ImportError, ExportError):  # pragma: no cover - onnxruntime missing
        info.ort_kernels = None
    return info
