"""``lowbit export SOURCE --format packed|onnx --out FILE`` and ``lowbit info FILE``.

SOURCE is a run folder, a ``model.ckpt`` or a packed file (to convert it to ONNX). Without
``--out`` the file goes next to the source: ``model.lowbit.safetensors`` or ``model.onnx``.
``--onnx-kernels`` picks the ONNX graph (:mod:`lowbit.export.onnx_integer` for ``integer`` and
``exact``, :mod:`lowbit.export.onnx_export` for ``float``); the log says which kernels ONNX Runtime
runs, read from its optimized graph.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lowbit.export.errors import ExportError
from lowbit.export.info import FileInfo, describe
from lowbit.export.onnx_file import DEFAULT_ONNX_KERNELS, ONNX_KERNELS

FORMATS = ("packed", "onnx")
DEFAULT_NAMES = {"packed": "model.lowbit.safetensors", "onnx": "model.onnx"}


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR", help="run folder, model.ckpt, or packed file (for --format onnx)")
    parser.add_argument("--format", choices=FORMATS, default="packed", help="packed (default) or onnx")
    parser.add_argument("--out", help=f"file to write (default: next to the source, {' / '.join(DEFAULT_NAMES.values())})")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, 21..25 (default 21; 25 adds INT2 weights)")
    parser.add_argument("--int8", action="store_true",
                        help="ONNX float (QDQ) graph with every weight in INT8 (INT16 for 8-bit DoReFa/PACT), no "
                             "2-/4-bit types; implies --onnx-kernels float")
    parser.add_argument("--onnx-kernels", choices=ONNX_KERNELS, default=None,
                        help=f"ONNX graph. '{DEFAULT_ONNX_KERNELS}' (default for quantized runs): ONNX Runtime's "
                             "integer kernels (QLinearConv, QGemm) wherever that equals the fake-quant model, float "
                             "convs where the model keeps a float tensor (ResNet residual adds, the average pool's "
                             "input); 'integer': integer kernels everywhere, those tensors in calibrated 8 bits "
                             "(as fast as ORT's U8S8 on ResNets, argmax agreement 85-97.5%% on trained ResNet-20s, digits); "
                             "'float': the QDQ graph computing in float (default for float runs)")


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a packed (.safetensors) or ONNX file written by lowbit export")


def _default_out(source: Path, fmt: str) -> Path:
    folder = source if source.is_dir() else source.parent
    return folder / DEFAULT_NAMES[fmt]


def run_export(args: argparse.Namespace) -> int:
    from lowbit.export.packed import load_source

    source = Path(args.source)
    if args.format != "onnx" and (args.opset is not None or args.int8 or args.onnx_kernels):
        raise ExportError("--opset, --int8 and --onnx-kernels apply to --format onnx only")
    out = Path(args.out) if args.out else _default_out(source, args.format)
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name")
    if out.resolve() == source.resolve():
        raise ExportError(f"--out {out} would overwrite the source")
    packed = load_source(source)
    if args.format == "packed":
        size = packed.save(out)
    else:
        from lowbit.export.onnx_file import write_onnx

        kernels = args.onnx_kernels or ("float" if args.int8 else None)
        if args.int8 and kernels != "float":
            raise ExportError(f"--int8 applies to the float graph (--onnx-kernels float); the {kernels} graph "
                              "stores its integer-kernel weights in INT8 already")
        size, _ = write_onnx(packed, out, kernels, args.opset, narrow=not args.int8)
    console = Console(soft_wrap=True)
    if not args.quiet:
        print_info(describe(out), console)
    if args.format == "onnx":
        print_kernels(describe(out), console)  # what ONNX Runtime will run, even with --quiet
    console.print(f"wrote {out} ({size:,} bytes)", highlight=False)
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = describe(args.file)
    console = Console(soft_wrap=True)
    print_info(info, console)
    if info.kind == "onnx":
        print_kernels(info, console)
    return 0


def print_kernels(info: FileInfo, console: Console) -> None:
    """Which kernels ONNX Runtime runs (its optimized graph), and the layers not on integer kernels, with why."""
    if info.ort_kernels is not None:
        console.print(f"ONNX Runtime kernels ({info.onnx_kernels or 'float'} graph): {info.ort_kernels}", highlight=False)
    for name, reason in (info.float_layers or {}).items():
        console.print(f"  float layer {name}: {reason}", highlight=False)
    if info.approximated:
        console.print(f"  {len(info.approximated)} float tensors of the model carried in 8 bits (calibrated): "
                      f"{', '.join(info.approximated[:6])}{' ...' if len(info.approximated) > 6 else ''}", highlight=False)


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value != float("inf") else "-"


def print_info(info: FileInfo, console: Console) -> None:
    table = Table(title=f"{info.path}: {info.kind}, model {info.model}, quantizer {info.quantizer}",
                  header_style="bold", title_justify="left", caption="w/a: weight/activation bits; ratio: "
                  "float32 bytes / stored bytes; header: JSON header, graph and format overhead", caption_justify="left")
    for col, justify in (("layer", "left"), ("w", "right"), ("a", "right"), ("params", "right"),
                         ("stored", "left"), ("bytes", "right"), ("fp32 bytes", "right"), ("ratio", "right")):
        table.add_column(col, justify=justify)
    for row in info.layers:
        table.add_row(row.name, str(row.weight_bits), str(row.act_bits), f"{row.params:,}", row.storage,
                      f"{row.stored_bytes:,}", f"{row.float_bytes:,}", _ratio(row.compression))
    layer_bytes = sum(r.stored_bytes for r in info.layers)
    overhead = info.file_bytes - layer_bytes - info.other_float_bytes
    table.add_section()
    table.add_row("other tensors", "", "", f"{info.other_float_bytes // 4:,}", "float32",
                  f"{info.other_float_bytes:,}", f"{info.other_float_bytes:,}", "1.00x")
    table.add_row("header", "", "", "", "", f"{overhead:,}", "", "")
    table.add_section()
    table.add_row("file", "", "", f"{sum(r.params for r in info.layers) + info.other_float_bytes // 4:,}", "",
                  f"{info.file_bytes:,}", f"{info.float32_bytes:,}", _ratio(info.compression), style="bold")
    console.print(table)
    if info.floor_bytes is not None:
        ratio = _ratio(info.float32_bytes / info.floor_bytes if info.floor_bytes else float("inf"))
        console.print(f"floor (packed weights + one float32 scale per tensor + float tensors): {info.floor_bytes:,} bytes, "
                      f"{ratio} against float32; "
                      f"the file is {info.file_bytes - info.floor_bytes:+,} bytes from it", highlight=False)
