"""Checks of an integer ONNX export against its packed model (issue 17): the int8 weights are the
packed file's integer codes, bit for bit, and ORT's optimized graph runs the kernels the export declares.

Used by the tests and by ``benchmarks/export_onnx_bench.py``.
"""

from __future__ import annotations

import numpy as np

from lowbit.export.bn_fold import AVX2_PAIR_LIMIT, code_multiplier
from lowbit.export.packed import PackedModel


def weight_code_mismatches(export, packed: PackedModel) -> list[str]:
    """Integer layers whose int8 weights are not the packed codes ``m`` times the code multiplier ``K``.

    ``K`` is one per layer, or (a layer writing exact codes, :mod:`lowbit.export.requant`) one per output
    channel with ``K/2 <= K_j``, within int8 and x86's u8 x s8 pair sums. Empty: every layer bit-exact."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in export.proto.graph.initializer}
    bad = []
    for name, kernel in export.layers.items():
        if kernel.kind != "integer":
            continue
        enc = packed.weights[f"{name}.weight"]
        k = code_multiplier(enc, packed.acts[name].n)
        stored = inits[f"{name}.weight_q"]
        m = enc.int_values().numpy().reshape(len(stored), -1).astype(np.int64)
        rows = stored.astype(np.int64).reshape(len(stored), -1)
        if stored.dtype != np.int8:
            bad.append(name)
        elif kernel.output != "codes":
            if not np.array_equal(rows, k * m):
                bad.append(name)
        elif not all(_channel_ok(row, mj, k, packed.acts[name].n) for row, mj in zip(rows, m)):
            bad.append(name)
    return bad


def _channel_ok(row: np.ndarray, m: np.ndarray, k: int, act_max: int) -> bool:
    kj = next((int(r // v) for r, v in zip(row, m) if v), k)
    return max(1, k // 2) <= kj and np.array_equal(row, kj * m) and 2 * act_max * np.abs(row).max() <= AVX2_PAIR_LIMIT


def kernel_mismatches(export) -> list[str]:
    """Where ORT's optimized graph differs from the layers' declared kernels (empty: it runs them as declared):
    one QLinearConv/QGemm per integer layer, one float Conv/Gemm per float layer, and a reason for each float one."""
    from lowbit.export.speed import FLOAT_OPS, ort_kernels

    counts = ort_kernels(export.proto)
    layers = list(export.layers.values())
    ints = [k for k in layers if k.kind == "integer"]
    floats = [k for k in layers if k.kind == "float"]
    problems = []
    for op in ("QLinearConv", "QGemm"):
        want = sum(k.op == op for k in ints)
        if counts.get(op, 0) != want:
            problems.append(f"{counts.get(op, 0)} {op} in ORT's graph, {want} declared")
    got = sum(counts.get(op, 0) for op in FLOAT_OPS)
    if got != len(floats):
        problems.append(f"{got} float Conv/Gemm in ORT's graph, {len(floats)} declared float")
    problems += [f"float layer {k.name} without a reason" for k in floats if not k.reason]
    return problems
