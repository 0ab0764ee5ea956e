"""Speed of a quantized model in ONNX Runtime: the float model, lowbit's exports and ORT's own static int8.

Files compared (all for the same packed model, ``PackedModel.float_module()`` being the float one):

- ``float``: the float model (exact fake-quant weights, float activations) through ``torch.onnx.export``;
- ``lowbit``: lowbit's integer-kernel graph (:mod:`lowbit.export.onnx_integer`, ``kernels`` as asked);
- ``ort_u8s8``: ``onnxruntime.quantization.quantize_static`` of the float file, QDQ format, uint8
  activations, int8 per-channel weights, MinMax calibration on the same calibration inputs;
- optionally ``lowbit_qdq``: lowbit's float-compute QDQ graph (:mod:`lowbit.export.onnx_export`).

:func:`time_sessions` runs them interleaved (one warm-up, then ``rounds`` rounds, each file once per
round in turn, so drifts of the machine hit all alike) and reports the median milliseconds per batch.
:func:`ort_kernels` reads ORT's optimized graph (``SessionOptions.optimized_model_filepath``): the op
types ORT will actually run.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lowbit.export.onnx_export import onnx_session
from lowbit.export.onnx_file import DEFAULT_ONNX_KERNELS
from lowbit.export.packed import PackedModel

INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits",
               "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool")
FLOAT_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "BatchNormalization")


def session(model, threads: int = 1, optimized_path: str | Path | None = None):
    """An ORT CPU session (``threads`` intra-op threads) for a ModelProto, bytes or path: lowbit's one
    session builder (:func:`lowbit.export.onnx_export.onnx_session`)."""
    return onnx_session(model, threads, optimized_path)


def ort_kernels(model) -> Counter:
    """Op types (``domain:op`` for non-default domains) of ORT's optimized graph of ``model``."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        session(model, optimized_path=path)
        optimized = onnx.load(str(path))
    return Counter(n.op_type for n in optimized.graph.node)


def kernel_summary(counts: Counter) -> str:
    """'21 QLinearConv, 1 QGemm; float: 1 Conv' style line."""
    ints = [f"{counts[op]} {op}" for op in INTEGER_OPS if counts.get(op)]
    floats = [f"{counts[op]} {op}" for op in FLOAT_OPS if counts.get(op)]
    return f"integer: {', '.join(ints) or 'none'}; float: {', '.join(floats) or 'none'}"


def float_onnx(packed: PackedModel, opset: int = 21):
    """The float model of ``packed`` (exact fake-quant weights, float activations) as an ONNX ModelProto."""
    from lowbit.export.onnx_export import _torch_export

    return _torch_export(packed, opset)


def ort_static_u8s8(float_model, calibration: np.ndarray):
    """ORT's ``quant_pre_process`` then ``quantize_static`` of ``float_model``: QDQ, uint8 activations, int8
    per-channel weights, MinMax calibration on ``calibration`` (one input at a time)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static warns on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source, prepared, target = (Path(tmp) / f for f in ("float.onnx", "prepared.onnx", "u8s8.onnx"))
            onnx.save(float_model, str(source))
            quant_pre_process(str(source), str(prepared))  # ORT's recommended step: folds batch norm into the convs
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            return onnx.load(str(target))
    finally:
        root.setLevel(level)


def time_sessions(sessions: dict, x: np.ndarray, rounds: int = 11) -> dict[str, float]:
    """Median ms per run of each session on ``x``, interleaved over ``rounds`` rounds after one warm-up."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for name, s in sessions.items():
        s.run(None, feeds[name])
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_packed(packed: PackedModel, batches: tuple[int, ...] = (1, 32), rounds: int = 11, threads: int = 1,
                 kernels: str = DEFAULT_ONNX_KERNELS, calibration: torch.Tensor | None = None, seed: int = 0,
                 include_qdq: bool = False, also: tuple[str, ...] = ()) -> dict:
    """Time the float, lowbit and ORT U8S8 files of ``packed``; return a JSON-ready dict.

    ``calibration``: inputs for lowbit's approximated tensors and ORT's calibration (default 32
    seeded N(0, 1) inputs). Timing inputs are seeded N(0, 1) batches. ``also``: more lowbit graphs
    (kernels) timed in the same interleaved run, as ``lowbit_<kernels>``."""
    from lowbit.export.onnx_export import example_input, to_onnx
    from lowbit.export.onnx_integer import to_integer_onnx

    shape = tuple(example_input(packed).shape[1:])
    if calibration is None:
        calibration = torch.randn(32, *shape, generator=torch.Generator().manual_seed(seed))
    exported = to_integer_onnx(packed, kernels, calibration)
    fmodel = float_onnx(packed)
    files = {"float": fmodel, "lowbit": exported.proto,
             "ort_u8s8": ort_static_u8s8(fmodel, calibration.numpy().astype(np.float32))}
    for other in also:
        files[f"lowbit_{other}"] = to_integer_onnx(packed, other, calibration).proto
    if include_qdq:
        files["lowbit_qdq"] = to_onnx(packed)
    sessions = {name: session(proto, threads) for name, proto in files.items()}
    result = {"model": packed.args.name, "kernels": kernels, "threads": threads, "rounds": rounds,
              "ort_kernels": {name: dict(ort_kernels(proto)) for name, proto in files.items()},
              "float_layers": {n: k.reason for n, k in exported.layers.items() if k.kind == "float"},
              "approximated": exported.approximated, "batches": {}}
    for batch in batches:
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + batch)).numpy()
        ms = time_sessions(sessions, x, rounds)
        result["batches"][str(batch)] = {"ms": ms, "x_float": {k: v / ms["float"] for k, v in ms.items()}}
    return result


def bench_onnx_file(path: str | Path, batches: tuple[int, ...] = (1, 32), rounds: int = 11, threads: int = 1) -> dict:
    """Time one ONNX file on its own (no float reference: that needs the run folder or packed file)."""
    s = session(Path(path), threads)
    first = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in first.shape[1:]]
    result = {"model": str(path), "threads": threads, "rounds": rounds, "ort_kernels": {"file": dict(ort_kernels(Path(path)))},
              "batches": {}}
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        result["batches"][str(batch)] = {"ms": time_sessions({"file": s}, x, rounds)}
    return result
