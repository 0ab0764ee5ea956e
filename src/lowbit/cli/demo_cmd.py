"""``lowbit demo``: every method that has landed, end to end on the embedded ``digits`` data, with
a summary table (method, accuracy, average bits, packed size) and a packed export of the best
quantized model.

A float LeNet-5; DoReFa 2-bit weights and 2-bit weights + activations (QAT from the float
weights); the same w2 run with SinReQ; a WaveQ plan (budget 5 average bits, first/last pinned at
8); DCQ binary (two sections, TWN 1-bit weights); a short ReLeQ search (its own float model trained
without the validation split it scores plans on); a packed k-bit export of the most accurate
quantized run, and ``report.html`` comparing every run (``lowbit report``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lowbit.errors import ConfigError
from lowbit.export.packed import load_source
from lowbit.report.html_report import write_report
from lowbit.report.run_reader import health_summary
from lowbit.runs.dcq_run import DcqOptions, run_dcq
from lowbit.runs.search_run import SearchOptions, run_search
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.runs.waveq_run import WaveQOptions, run_waveq
from lowbit.train import Reporter


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for the demo's runs (default runs/demo)")
    parser.add_argument("--fast", action="store_true", help="fewer epochs (for CI)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"demo output folder {out} is not empty; choose another --out (nothing was overwritten)")
    reporter = Reporter(quiet=args.quiet)
    epochs = 3 if args.fast else 8
    start = time.perf_counter()
    base = dict(model="lenet5", dataset="digits", epochs=epochs, seed=0, batch_size=64)
    float_dir = str(out / "float")
    qat = dict(base, init=float_dir)  # each quantizer's default recipe from float weights (lowbit.recipes)
    steps = [
        ("float", lambda o: run_train(TrainOptions(**base, out=o), reporter=reporter, command="lowbit demo (float)")),
        ("dorefa w2", lambda o: run_train(TrainOptions(**qat, quantizer="dorefa", wbits=2, out=o), reporter=reporter,
                                          command="lowbit demo (dorefa w2)")),
        ("dorefa w2a2", lambda o: run_train(TrainOptions(**qat, quantizer="dorefa", wbits=2, abits=2, out=o),
                                            reporter=reporter, command="lowbit demo (dorefa w2a2)")),
        ("dorefa w2 + sinreq", lambda o: run_train(TrainOptions(**qat, quantizer="dorefa", wbits=2, sinreq=0.01, out=o),
                                                   reporter=reporter, command="lowbit demo (dorefa w2 + sinreq)")),
        ("waveq budget 5", lambda o: run_waveq(WaveQOptions(model="lenet5", dataset="digits", init=float_dir,
                                                            budget=5.0, epochs=epochs, finetune_epochs=2, seed=0,
                                                            out=o), reporter=reporter,
                                               command="lowbit demo (waveq budget 5)")),
        ("dcq binary", lambda o: run_dcq(DcqOptions(teacher=float_dir, dataset="digits", sections=2, quantizer="twn",
                                                    wbits=1, epochs=epochs, seed=0, out=o),
                                         reporter=reporter, command="lowbit demo (dcq binary)")),
        ("releq search", lambda o: run_search(SearchOptions(
            strategy="releq", model="lenet5", dataset="digits", float_epochs=epochs, max_evals=6 if args.fast else 16,
            eval_steps=30 if args.fast else 60, eval_train_size=400, finetune_epochs=1 if args.fast else 3, seed=0,
            out=o), reporter=reporter, command="lowbit demo (releq search)")),
    ]
    results = []
    for label, step in steps:
        reporter.log(f"\n[bold cyan]== {label} ==[/]")
        folder = out / label.replace(" + ", "-").replace(" ", "-")
        results.append((label, folder, step(str(folder))))
    quantized = [(label, folder, r) for label, folder, r in results if r["avg_bits"] < 32]
    best_label, best_folder, _ = max(quantized, key=lambda item: item[2]["accuracy"])
    packed_file = out / "best.lowbit"
    packed_bytes = load_source(best_folder).save(packed_file)
    report = write_report([folder for _, folder, _ in results], out / "report.html",
                          title=f"lowbit demo: LeNet-5 on digits, {epochs} epochs")

    table = Table(title=f"lowbit demo: lenet5 on digits, {epochs} epochs, seed 0", header_style="bold")
    for col in ("method", "accuracy", "avg bits", "packed size", "vs float32", "health", "run folder"):
        table.add_column(col, overflow="fold")
    for label, folder, r in results:
        health = health_summary(r) or "-"
        table.add_row(label, f"{100 * r['accuracy']:.2f}%", f"{r['avg_bits']:.2f}", f"{r['size_bytes']:,} B",
                      f"{r['compression']:.1f}x", health if health == "ok" else f"[bold red]{health}[/]", str(folder))
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the run folders
        console = Console(width=200)
    console.print(table)
    console.print(f"best quantized model ({best_label}) exported to {packed_file} ({packed_bytes:,} bytes); "
                  f"inspect it with: lowbit info {packed_file}")
    console.print(f"report comparing every run: {report}")
    console.print(f"demo finished in {time.perf_counter() - start:.1f} s; run folders under {out}")
    return 0
