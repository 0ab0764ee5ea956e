"""``lowbit bench RUN_OR_FILE``: how fast the exported model runs in ONNX Runtime on this machine.

SOURCE is a run folder, a ``model.ckpt`` or a packed file: the float model, lowbit's integer ONNX
export and ONNX Runtime's own static U8S8 quantization of the float model are timed interleaved
at each batch size (:mod:`lowbit.export.speed`), and a table of median ms and ratios to float is
printed and written as JSON. An ONNX file is timed on its own (no float reference to compare with).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lowbit.export.errors import ExportError
from lowbit.export.onnx_file import DEFAULT_ONNX_KERNELS

FILES = {"float": "float model (ORT)", "lowbit": "lowbit export", "ort_u8s8": "ORT quantize_static U8S8",
         "lowbit_qdq": "lowbit QDQ (float kernels)", "file": "the file"}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_OR_FILE", help="run folder, model.ckpt, packed file or ONNX file")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved timing rounds, median taken (default 11)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--onnx-kernels", choices=("exact", "integer"), default=DEFAULT_ONNX_KERNELS,
                        help=f"lowbit graph to time (see 'lowbit export --onnx-kernels'; default {DEFAULT_ONNX_KERNELS})")
    parser.add_argument("--qdq", action="store_true", help="also time lowbit's float-kernel QDQ graph")
    parser.add_argument("--json", metavar="FILE", help="write the results here (default: bench.json next to the source)")


def run(args: argparse.Namespace) -> int:
    from lowbit.export.packed import load_source
    from lowbit.export.speed import bench_onnx_file, bench_packed, kernel_summary

    source = Path(args.source)
    if not source.exists():
        raise ExportError(f"not found: {source}")
    if min(args.batch) < 1 or args.rounds < 1 or args.threads < 1:
        raise ExportError("--batch, --rounds and --threads must be positive")
    batches = tuple(args.batch)
    if source.is_file() and source.suffix == ".onnx":
        result = bench_onnx_file(source, batches, args.rounds, args.threads)
    else:
        result = bench_packed(load_source(source), batches, args.rounds, args.threads, args.onnx_kernels,
                              include_qdq=args.qdq)
    console = Console(soft_wrap=True)
    table = Table(title=f"{result['model']}: ms per batch, median of {args.rounds} interleaved rounds, "
                        f"{args.threads} thread(s)", title_justify="left", header_style="bold")
    table.add_column("file")
    for batch in batches:
        table.add_column(f"batch {batch} ms", justify="right")
        table.add_column("x float", justify="right")
    for name in next(iter(result["batches"].values()))["ms"]:
        cells = []
        for batch in batches:
            row = result["batches"][str(batch)]
            cells += [f"{row['ms'][name]:.3f}", f"{row['x_float'][name]:.2f}" if "x_float" in row else "-"]
        table.add_row(FILES.get(name, name), *cells)
    console.print(table)
    for name, counts in result["ort_kernels"].items():
        console.print(f"{FILES.get(name, name)}: {kernel_summary(Counter(counts))}", highlight=False)
    for name, reason in result.get("float_layers", {}).items():
        console.print(f"  lowbit float layer {name}: {reason}", highlight=False)
    out = Path(args.json) if args.json else (source if source.is_dir() else source.parent) / "bench.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}", highlight=False)
    return 0
