"""Export benchmark: packed file size against its floor and float32, and the three deployment paths
(packed float module, integer reference runtime, ONNX Runtime) against the fake-quant model.

Models: LeNet-5 (1x28x28) and ResNet-20 (3x32x32, width 1), DoReFa weights and activations at
uniform 2, 4 and 8 bits (first/last layers pinned at 8) and one mixed plan, random init (seed 0)
with batch-norm statistics from 4 training-mode batches of N(0, 1) inputs; evaluation inputs are
another N(0, 1) batch. One torch thread, one ONNX Runtime thread.

    python benchmarks/export_bench.py [--batch 32] [--reps 7] [--seed 0]

Writes benchmarks/results/export.json and export.md. Speeds are informational: the integer
runtime is a float64 reference implementation (exact integer sums), not a fast kernel.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowbit.costs import model_costs
from lowbit.export import PackedModel, integer_model, output_tolerance, pack_model
from lowbit.export.grids import same_values
from lowbit.nn import quantize_, quantized_layers
from lowbit.plan import LayerBits, Plan, PlanEntry
from lowbit.quant import QuantizerSpec
from lowbit.runs.build import ModelArgs

RESULTS = Path(__file__).parent / "results"
MODELS = {"lenet5": ModelArgs("lenet5", 10, 1, 28, 1.0), "resnet20": ModelArgs("resnet20", 10, 3, 32, 1.0)}
MIXED = {
    "lenet5": Plan(LayerBits(2, 4), LayerBits(8, 8), (PlanEntry("conv2", 4, 4), PlanEntry("fc4", 3, 3))),
    "resnet20": Plan(LayerBits(3, 4), LayerBits(8, 8), (PlanEntry("layer1_*", 4, 4), PlanEntry("layer3_*", 2, 3))),
}
MIXED_LABEL = {"lenet5": "mixed (conv2 w4a4, fc3 w2a4, fc4 w3a3)",
               "resnet20": "mixed (layer1 w4a4, layer2 w3a4, layer3 w2a3)"}


def calibrated(args: ModelArgs, plan: Plan, seed: int) -> tuple[torch.nn.Module, QuantizerSpec]:
    torch.manual_seed(seed)
    model = args.build()
    spec = QuantizerSpec("dorefa")
    quantize_(model, plan, spec)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, args.in_channels, args.input_size, args.input_size))
    return model.eval(), spec


def interleaved_ms(fns: dict, x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median wall time (ms) of each function, the runs interleaved so drifts hit all alike."""
    times = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn(x)  # warm-up
        for _ in range(reps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def rel(diff: float, y: torch.Tensor) -> float:
    return diff / float(y.abs().max())


def within(out: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    """Fraction of samples whose logits are all within ``tol`` of the reference."""
    return float(((out - ref).abs().amax(1) <= tol).float().mean())


def bench(name: str, label: str, plan: Plan, args: argparse.Namespace, tmp: Path) -> dict:
    margs = MODELS[name]
    model, spec = calibrated(margs, plan, args.seed)
    packed_path = tmp / f"{name}.safetensors"
    file_bytes = pack_model(model, margs, spec, plan).save(packed_path)
    packed = PackedModel.from_bytes(packed_path.read_bytes())
    sizes, costs = packed.sizes(), model_costs(model)
    assert sizes["floor"] == costs.size_bytes
    x = torch.randn(args.batch, margs.in_channels, margs.input_size, margs.input_size,
                    generator=torch.Generator().manual_seed(args.seed + 1))
    plain, with_acts, ints = packed.float_module(), packed.float_module(activations=True), integer_model(packed)
    exact = all(same_values(plain.get_submodule(n).weight, layer.effective_weight())
                for n, layer in quantized_layers(model).items())
    with torch.no_grad():
        y = model(x)
        y_plain, y_acts, y_int = plain(x), with_acts(x), ints(x)
    row = {
        "model": name, "plan": label, "weighted_bits": round(costs.weighted_bits, 3),
        "file_bytes": file_bytes, "header_bytes": sizes["header"], "floor_bytes": sizes["floor"],
        "float32_bytes": sizes["float32"], "compression_file": sizes["float32"] / file_bytes,
        "compression_floor": sizes["float32"] / sizes["floor"],
        "file_over_floor": file_bytes / sizes["floor"] - 1, "weights_bit_exact": exact,
        "max_diff_packed_acts": float((y_acts - y).abs().max()),
        "max_diff_packed_plain": float((y_plain - y).abs().max()),
        "max_diff_int": float((y_int - y).abs().max()), "tolerance": output_tolerance(packed, y),
        "argmax_agree_int": float((y_int.argmax(1) == y.argmax(1)).float().mean()),
        "output_peak": float(y.abs().max()),
    }
    row["rel_diff_int"] = rel(row["max_diff_int"], y)
    row["samples_within_tol_int"] = within(y_int, y, row["tolerance"])
    fns = {"float": plain, "fake_quant": model, "integer": ints}
    try:
        from lowbit.export.onnx_export import export_onnx, onnx_session, run_onnx

        onnx_path = tmp / f"{name}.onnx"
        row["onnx_bytes"] = export_onnx(packed, onnx_path)
        session = onnx_session(onnx_path, threads=1)
        y_onnx = run_onnx(session, x)
        row["max_diff_onnx"] = float((y_onnx - y).abs().max())
        row["rel_diff_onnx"] = rel(row["max_diff_onnx"], y)
        row["argmax_agree_onnx"] = float((y_onnx.argmax(1) == y.argmax(1)).float().mean())
        row["samples_within_tol_onnx"] = within(y_onnx, y, row["tolerance"])
        row["max_diff_int_vs_onnx"] = float((y_onnx - y_int).abs().max())
        fns["onnx"] = lambda inp: run_onnx(session, inp)
    except ImportError:
        print("onnx/onnxruntime missing: ONNX path skipped", file=sys.stderr)
    ms = interleaved_ms(fns, x, args.reps)
    row["ms"] = ms
    row["int_speed_ratio"] = ms["float"] / ms["integer"]  # < 1: the integer runtime is slower
    print(f"{name:8s} {label:48s} file {file_bytes:>9,} floor {sizes['floor']:>9,} x{row['compression_file']:5.2f} "
          f"int {row['max_diff_int']:.2e} onnx {row.get('max_diff_onnx', float('nan')):.2e} "
          f"float {ms['float']:.1f}ms int {ms['integer']:.1f}ms", flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Export: packed size, and the three deployment paths against the fake-quant model", "",
        f"Command: `{meta['command']}` ({meta['machine']}, torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, "
        f"1 thread, batch {meta['batch']}, median of {meta['reps']} interleaved runs).", "",
        "DoReFa weights and activations, random init (seed 0) with batch-norm statistics from random inputs; "
        "first/last layers at 8 bits. *floor*: packed weights + one float32 scale per quantized tensor + float32 "
        "biases/BN/activation parameters (`costs.size_bytes`); *file*: the packed safetensors file (floor minus the "
        "scales, which live in the JSON header, plus the header); compression against the float32 model.", "",
        "| model | plan | w bits (weighted) | file bytes | floor bytes | header bytes | x float32 (file) | "
        "x float32 (floor) | ONNX bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['plan']} | {r['weighted_bits']:.2f} | {r['file_bytes']:,} | "
                     f"{r['floor_bytes']:,} | {r['header_bytes']:,} | {r['compression_file']:.2f} | "
                     f"{r['compression_floor']:.2f} | {r.get('onnx_bytes', 0):,} |")
    lines += [
        "", "Max |output difference| against the fake-quant model (logits; *peak* = max |logit| of the batch). "
        "*packed*: the packed file's float module with the activation quantizers re-applied (the plain float module "
        "computes with float activations, so it is not compared when activations are quantized); *tolerance*: "
        "`lowbit.export.intrun.output_tolerance` (float rounding + one activation step at the last layer); "
        "*within tol*: fraction of samples whose logits are all within it. Deep nets exceed the tolerance through "
        "cascading activation level flips (see lowbit/export/intrun.py); the integer runtime computes exact sums, "
        "*int vs ONNX* compares the two deployment paths with each other.", "",
        "| model | plan | weights bit-exact | packed | integer | ONNX | int vs ONNX | tolerance | peak | "
        "within tol (int / ONNX) | argmax agree (int / ONNX) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['plan']} | {'yes' if r['weights_bit_exact'] else 'NO'} | "
                     f"{r['max_diff_packed_acts']:.2g} | {r['max_diff_int']:.2g} | "
                     f"{r.get('max_diff_onnx', float('nan')):.2g} | {r.get('max_diff_int_vs_onnx', float('nan')):.2g} | "
                     f"{r['tolerance']:.2g} | {r['output_peak']:.3g} | "
                     f"{r['samples_within_tol_int']:.2f} / {r.get('samples_within_tol_onnx', float('nan')):.2f} | "
                     f"{r['argmax_agree_int']:.3f} / {r.get('argmax_agree_onnx', float('nan')):.3f} |")
    lines += [
        "", "Speed (informational; ms per batch): the float module, the fake-quant model, the integer reference "
        "runtime (float64 exact integer sums, not an optimized kernel) and ONNX Runtime on the QDQ graph; "
        "ratio = float / integer (below 1: the integer runtime is slower).", "",
        "| model | plan | float ms | fake-quant ms | integer ms | ONNX ms | ratio float/integer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['model']} | {r['plan']} | {ms['float']:.2f} | {ms['fake_quant']:.2f} | {ms['integer']:.2f} | "
                     f"{ms.get('onnx', float('nan')):.2f} | {r['int_speed_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            for bits in (2, 4, 8):
                rows.append(bench(name, f"w{bits}a{bits}", Plan.uniform(bits, bits), args, Path(tmp)))
            rows.append(bench(name, MIXED_LABEL[name], MIXED[name], args, Path(tmp)))
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "missing"
    meta = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": sys.version.split()[0],
            "torch": torch.__version__, "onnxruntime": ort_version, "batch": args.batch, "reps": args.reps,
            "seed": args.seed, "command": " ".join(["python", *sys.argv])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "export.md").write_text(markdown(rows, meta))
    print(f"wrote {RESULTS / 'export.json'} and export.md")


if __name__ == "__main__":
    main()
