"""Which ONNX Runtime kernel should run a 4-bit Linear layer: float Gemm, QGemm (uint8 x int8, what lowbit's
integer export uses) or MatMulNBits (com.microsoft, 4-bit weights, float activations)? Issue 17 asks to use
MatMulNBits where it measures faster.

For each Linear shape of the zoo's classifiers (and one large layer for reference), batch 1 and 32: ms of one
node of each kind, interleaved, median, one ORT thread, and whether its output equals the float product of the
same 4-bit weights and 4-bit activation codes (max |difference| relative to the output's peak). MatMulNBits runs
twice: ``accuracy_level 0`` (float compute; DoReFa's 4-bit grid needs the float zero point 7.5) and
``accuracy_level 4`` (int8 compute, the activations quantized on the fly per block, so not the model's sums;
integer zero point 8).

    python benchmarks/onnx_linear_kernels.py [--rounds 7]

Writes benchmarks/results/onnx_linear_kernels.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from lowbit.export.speed import session, time_sessions

RESULTS = Path(__file__).parent / "results"
SHAPES = {"lenet5 fc3": (400, 120), "lenet5 fc4": (120, 84), "resnet20 fc": (64, 10), "mobilenet fc": (1024, 10),
          "large (reference)": (1024, 1024)}
BLOCK = 32
SHIFT: dict[str, float] = {}  # kernels whose grid is the DoReFa grid shifted by SHIFT * scale (integer zero point)


def graphs(k: int, n: int, rng: np.random.Generator):
    """(inputs' dtypes, ONNX graphs) of one k -> n Linear with 4-bit DoReFa weights, codes 0..15 (w = s (c - 7.5))."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    scale = 0.05
    w = (codes.astype(np.float32) - 7.5) * scale

    def model(node, inits, in_type):
        g = h.make_graph([node], "linear", [h.make_tensor_value_info("x", in_type, ["b", k])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        proto = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
        proto.ir_version = 10
        return proto

    blocks = -(-k // BLOCK)
    padded = np.zeros((n, blocks * BLOCK), np.uint8)
    padded[:, :k] = codes
    nibbles = (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(n, blocks, BLOCK // 2)
    scales = np.full(n * blocks, scale, np.float32)
    out = {
        "float Gemm": (T.FLOAT, model(h.make_node("Gemm", ["x", "w"], ["y"], transB=1), [nh.from_array(w, "w")], T.FLOAT)),
        "QGemm u8s8": (T.UINT8, model(h.make_node("QGemm", ["x", "xs", "xz", "w", "ws", "wz"], ["y"], domain="com.microsoft",
                                                  transB=1),
                                      [nh.from_array(np.array(1 / 15, np.float32), "xs"), nh.from_array(np.array(0, np.uint8), "xz"),
                                       nh.from_array((2 * codes.astype(np.int16) - 15).astype(np.int8), "w"),
                                       nh.from_array(np.array(scale / 2, np.float32), "ws"), nh.from_array(np.array(0, np.int8), "wz")],
                                      T.UINT8)),
    }
    for level, zeros in ((0, nh.from_array(np.full(n * blocks, 7.5, np.float32), "z")),
                         (4, nh.from_array(np.full(n * -(-blocks // 2), 0x88, np.uint8), "z"))):
        shift = 0.0 if level == 0 else 0.5  # integer zero point 8: the grid shifted by half a step
        inits = [nh.from_array(nibbles, "b"), nh.from_array(scales, "s"), zeros]
        node = h.make_node("MatMulNBits", ["x", "b", "s", "z"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                           block_size=BLOCK, accuracy_level=level)
        out[f"MatMulNBits level {level}"] = (T.FLOAT, model(node, inits, T.FLOAT))
        SHIFT[f"MatMulNBits level {level}"] = shift
    return codes, w, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for label, (k, n) in SHAPES.items():
        codes, w, files = graphs(k, n, rng)
        sessions = {name: session(spec[1]) for name, spec in files.items()}
        for batch in (1, 32):
            a = rng.integers(0, 16, (batch, k)).astype(np.uint8)
            xf = a.astype(np.float32) / 15
            ref = xf.astype(np.float64) @ w.T.astype(np.float64)
            errors = {}
            for name in files:
                x = a if name.startswith("QGemm") else xf
                y = sessions[name].run(None, {"x": x})[0].astype(np.float64)
                y += SHIFT.get(name, 0.0) * 0.05 * xf.sum(1, keepdims=True)  # level 4: zero point 8, not 7.5
                errors[name] = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12))
            times = {name: [] for name in files}
            for _ in range(args.rounds):  # each kernel on its own input type, the kernels interleaved
                for name in files:
                    x = a if name.startswith("QGemm") else xf
                    times[name].append(time_sessions({name: sessions[name]}, x, 20)[name])
            ms = {name: float(np.median(t)) for name, t in times.items()}
            rows.append({"layer": label, "k": k, "n": n, "batch": batch, "ms": ms, "relative_error": errors})
            print(label, batch, {m: round(v * 1000, 1) for m, v in ms.items()}, "us", flush=True)
    import onnxruntime

    meta = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "onnxruntime": onnxruntime.__version__,
            "rounds": args.rounds, "command": " ".join(["python", *sys.argv])}
    lines = ["# 4-bit Linear layers in ONNX Runtime: float Gemm vs QGemm vs MatMulNBits", "",
             f"Command: `{meta['command']}` ({meta['machine']}, onnxruntime {meta['onnxruntime']}, 1 thread; "
             f"microseconds per call, median of {args.rounds} interleaved rounds of 20 calls). *err*: max |output - "
             "float product of the 4-bit weights and codes| over the output's peak.", "",
             "| layer (in x out) | batch | " + " | ".join(f"{n} us (err)" for n in rows[0]["ms"]) + " |",
             "|---|---|" + "---|" * len(rows[0]["ms"])]
    for r in rows:
        lines.append(f"| {r['layer']} ({r['k']}x{r['n']}) | {r['batch']} | " +
                     " | ".join(f"{1000 * r['ms'][n]:.1f} ({r['relative_error'][n]:.0e})" for n in r["ms"]) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "onnx_linear_kernels.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "onnx_linear_kernels.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'onnx_linear_kernels.md'}")


if __name__ == "__main__":
    main()
