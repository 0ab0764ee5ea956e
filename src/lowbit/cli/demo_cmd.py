"""``lowbit demo``: the main job on the embedded ``digits`` data, end to end, with a summary table.

Today: a float LeNet-5, then DoReFa 2-bit weights (QAT from the float weights), then 2-bit
weights and activations. Methods join the demo as they land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lowbit.errors import ConfigError
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"demo output folder {out} is not empty; choose another --out (nothing was overwritten)")
    reporter = Reporter(quiet=args.quiet)
    epochs = 3 if args.fast else 8
    start = time.perf_counter()
    base = dict(model="lenet5", dataset="digits", epochs=epochs, seed=0, batch_size=64)
    runs = [
        ("float", TrainOptions(**base, out=str(out / "float"))),
        ("dorefa w2", TrainOptions(**base, quantizer="dorefa", wbits=2, init=str(out / "float"), out=str(out / "dorefa-w2"))),
        ("dorefa w2a2", TrainOptions(**base, quantizer="dorefa", wbits=2, abits=2, init=str(out / "float"),
                                     out=str(out / "dorefa-w2a2"))),
    ]
    results = []
    for label, options in runs:
        reporter.log(f"\n[bold cyan]== {label} ==[/]")
        results.append((label, options.out, run_train(options, reporter=reporter, command=f"lowbit demo ({label})")))
    table = Table(title=f"lowbit demo: lenet5 on digits, {epochs} epochs, seed 0", header_style="bold")
    for col in ("method", "accuracy", "avg bits", "packed size", "vs float32", "run folder"):
        table.add_column(col, overflow="fold")
    for label, folder, r in results:
        table.add_row(label, f"{100 * r['accuracy']:.2f}%", f"{r['avg_bits']:.2f}", f"{r['size_bytes']:,} B",
                      f"{r['compression']:.1f}x", str(folder))
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the run folders
        console = Console(width=200)
    console.print(table)
    console.print(f"demo finished in {time.perf_counter() - start:.1f} s; run folders under {out}")
    return 0
