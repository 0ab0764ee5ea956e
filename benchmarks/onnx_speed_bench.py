"""ONNX Runtime speed: the float model, lowbit's integer export and ORT's own U8S8 static quantization.

Models lenet5 (1x28x28), resnet20 and mobilenet (3x32x32, width 1), conv1d (1x40); DoReFa weights and
activations at w8a8, w4a4, w2a2 (first/last layers pinned at 8 bits) and one mixed plan; random init
(seed 0) with batch-norm statistics from 4 training-mode batches of N(0, 1) inputs. For each: ms per
batch (1 and 32) of the three files in one interleaved run (lowbit.export.speed.bench_packed, one
ORT thread), the kernels ORT runs, and the argmax agreement and max |difference| of lowbit's export
with the fake-quant model on 256 N(0, 1) inputs.

    python benchmarks/onnx_speed_bench.py [--rounds 11] [--kernels integer] [--models lenet5 resnet20 ...]

Writes benchmarks/results/onnx_speed.json and onnx_speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from pathlib import Path

import torch

from lowbit.export import pack_model
from lowbit.export.onnx_export import example_input, run_onnx
from lowbit.export.onnx_integer import to_integer_onnx
from lowbit.export.speed import bench_packed, kernel_summary, session
from lowbit.nn import quantize_
from lowbit.plan import LayerBits, Plan, PlanEntry
from lowbit.quant import QuantizerSpec
from lowbit.runs.build import ModelArgs

RESULTS = Path(__file__).parent / "results"
MODELS = {"lenet5": ModelArgs("lenet5", 10, 1, 28, 1.0), "resnet20": ModelArgs("resnet20", 10, 3, 32, 1.0),
          "mobilenet": ModelArgs("mobilenet", 10, 3, 32, 1.0), "conv1d": ModelArgs("conv1d", 10, 1, 40, 1.0)}
MIXED = {
    "lenet5": Plan(LayerBits(2, 4), LayerBits(8, 8), (PlanEntry("conv2", 4, 4), PlanEntry("fc4", 3, 3))),
    "resnet20": Plan(LayerBits(3, 4), LayerBits(8, 8), (PlanEntry("layer1_*", 4, 4), PlanEntry("layer3_*", 2, 3))),
    "mobilenet": Plan(LayerBits(4, 4), LayerBits(8, 8), (PlanEntry("block1*", 3, 4), PlanEntry("block*.conv_pw", 2, 4))),
    "conv1d": Plan(LayerBits(3, 4), LayerBits(8, 8), (PlanEntry("conv2", 2, 3),)),
}
PLANS = {"w8a8": Plan.uniform(8, 8), "w4a4": Plan.uniform(4, 4), "w2a2": Plan.uniform(2, 2)}


def calibrated(args: ModelArgs, plan: Plan, seed: int):
    torch.manual_seed(seed)
    model = args.build()
    spec = QuantizerSpec("dorefa")
    quantize_(model, plan, spec)
    shape = example_input(pack_model(model, args, spec, plan)).shape[1:]
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, *shape))
    return model.eval(), pack_model(model, args, spec, plan), shape


def bench(name: str, label: str, plan: Plan, args: argparse.Namespace) -> dict:
    model, packed, shape = calibrated(MODELS[name], plan, args.seed)
    row = bench_packed(packed, (1, 32), args.rounds, 1, args.kernels, seed=args.seed)
    x = torch.randn(256, *shape, generator=torch.Generator().manual_seed(args.seed + 7))
    with torch.no_grad():
        y = model(x)
    y_onnx = run_onnx(session(to_integer_onnx(packed, args.kernels).proto), x)
    row.update(plan=label, argmax_agree=float((y_onnx.argmax(1) == y.argmax(1)).float().mean()),
               max_diff=float((y_onnx - y).abs().max()), output_peak=float(y.abs().max()))
    b1, b32 = row["batches"]["1"], row["batches"]["32"]
    print(f"{name:9s} {label:6s} b1 " + " ".join(f"{k} {v:.3f}" for k, v in b1["ms"].items()) +
          " | b32 " + " ".join(f"{k} {v:.2f} ({b32['x_float'][k]:.2f}x)" for k, v in b32["ms"].items()) +
          f" | agree {row['argmax_agree']:.3f}", flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# ONNX Runtime speed: float vs lowbit's integer export vs ORT's U8S8 static quantization", "",
        f"Command: `{meta['command']}` ({meta['machine']}, onnxruntime {meta['onnxruntime']}, 1 thread, median of "
        f"{meta['rounds']} interleaved rounds; lowbit graph: `--onnx-kernels {meta['kernels']}`).", "",
        "ms per batch; *x float*: ratio to the float model (below 1 is faster). *agree*: argmax agreement of "
        "lowbit's export with the fake-quant model on 256 N(0, 1) inputs (random-init nets, see the notes); "
        "*float layers*: layers lowbit computes in float (first layer: float network input; 8-bit DoReFa "
        "weights: 9-bit integers).", "",
        "| model | plan | float b1 | lowbit b1 | U8S8 b1 | float b32 | lowbit b32 (x float) | U8S8 b32 (x float) | "
        "lowbit / U8S8 b32 | agree | float layers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b1, b32 = r["batches"]["1"]["ms"], r["batches"]["32"]["ms"]
        lines.append(f"| {r['model']} | {r['plan']} | {b1['float']:.3f} | {b1['lowbit']:.3f} | {b1['ort_u8s8']:.3f} | "
                     f"{b32['float']:.2f} | {b32['lowbit']:.2f} ({b32['lowbit'] / b32['float']:.2f}) | "
                     f"{b32['ort_u8s8']:.2f} ({b32['ort_u8s8'] / b32['float']:.2f}) | {b32['lowbit'] / b32['ort_u8s8']:.2f} | "
                     f"{r['argmax_agree']:.3f} | {len(r['float_layers'])} |")
    lines += ["", "Kernels in ORT's optimized graphs (lowbit / U8S8):", ""]
    for r in rows:
        lines.append(f"- {r['model']} {r['plan']}: lowbit {kernel_summary(Counter(r['ort_kernels']['lowbit']))}; "
                     f"U8S8 {kernel_summary(Counter(r['ort_kernels']['ort_u8s8']))}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernels", choices=("integer", "exact"), default="integer")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        for label, plan in [*PLANS.items(), ("mixed", MIXED[name])]:
            rows.append(bench(name, label, plan, args))
    import onnxruntime

    meta = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "onnxruntime": onnxruntime.__version__,
            "rounds": args.rounds, "kernels": args.kernels, "seed": args.seed, "command": " ".join(["python", *sys.argv])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.kernels == "integer" else f"_{args.kernels}"
    (RESULTS / f"onnx_speed{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"onnx_speed{suffix}.md").write_text(markdown(rows, meta))
    print(f"wrote {RESULTS / f'onnx_speed{suffix}.json'} and .md")


if __name__ == "__main__":
    main()
