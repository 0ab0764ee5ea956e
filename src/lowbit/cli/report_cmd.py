"""``lowbit report RUN_DIR [RUN_DIR ...] [--out report.html] [--title T]``: one self-contained HTML
file comparing runs (lowbit.report.html_report).

Each RUN_DIR is a run folder (holds result.json), or a folder of runs such as ``runs/demo``: then
every run folder below it is included, nested ones too (DCQ's ``teacher/``, a search's ``float/``);
a run folder named directly brings only itself. Quoted globs are expanded. A path that names no
run is a user error (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from lowbit.errors import ConfigError

DESCRIPTION = ("Compare run folders in one self-contained HTML file: a table of accuracy, bits and size, "
               "bits per layer, accuracy vs average bits with the Pareto front, training curves and each "
               "run's own plots. A folder of runs (e.g. runs/demo) brings every run below it.")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders (each holds result.json) or folders of them")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--title", help="page title (default: 'lowbit report: N runs')")


def run(args: argparse.Namespace) -> int:
    from lowbit.report.html_report import write_report

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    path = write_report(args.runs, out, title=args.title)
    if not args.quiet:
        Console(soft_wrap=True).print(f"wrote {path} ({path.stat().st_size / 1024:,.0f} KiB)", highlight=False)
    return 0
