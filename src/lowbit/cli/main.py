"""The ``lowbit`` command line: subcommands wire the library together; nothing else reads config.

User mistakes (lowbit's documented errors) print one line and exit 2, without a traceback
unless ``--debug``. Exit codes: 0 success, 2 user error, 1 unexpected failure, 3 a ``--strict`` run
that failed its health checks (its folder is written), 130 interrupted by
SIGINT (Ctrl-C), 143 interrupted by SIGTERM. During training either signal finishes the current
step, writes a checkpoint (``lowbit train``; continue it with ``--resume``) and exits with that
code; outside training SIGINT exits 130 at once and SIGTERM ends the process (status 143 in a shell).
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from lowbit import __version__
from lowbit.errors import EXIT_SIGINT, LowbitError, TrainingInterrupted, UnhealthyRunError

EXIT_USER_ERROR = 2
EXIT_CODES_HELP = ("exit codes: 0 success, 1 unexpected failure (a bug), 2 user error (one line, no traceback), "
                   "3 --strict and the run failed its health checks (not learning; its folder is written), "
                   "130 interrupted by Ctrl-C (SIGINT), 143 interrupted by SIGTERM. During training either signal "
                   "finishes the current step first; 'lowbit train' also writes a checkpoint, continued by "
                   "'lowbit train --resume --out RUN_DIR'.")


def build_parser() -> argparse.ArgumentParser:
    from lowbit.cli import demo_cmd, list_cmd, train_cmd

    parser = argparse.ArgumentParser(prog="lowbit", description="Deep (below 8-bit) quantization for PyTorch.",
                                     epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", parents=[common], help="train a float or quantized model",
                           description="Train a zoo model, float or quantization-aware, and write a run folder.")
    train_cmd.add_train_arguments(train)
    train.set_defaults(func=train_cmd.run)

    from lowbit.cli import dcq_cmd
    dcq = sub.add_parser("dcq", parents=[common], help="quantize a float teacher by divide-and-conquer distillation",
                         description=dcq_cmd.DESCRIPTION)
    dcq_cmd.add_dcq_arguments(dcq)
    dcq.set_defaults(func=dcq_cmd.run)

    from lowbit.cli import waveq_cmd
    waveq = sub.add_parser("waveq", parents=[common], help="learn a per-layer plan (bits and scale) with WaveQ",
                           description=waveq_cmd.DESCRIPTION)
    waveq_cmd.add_waveq_arguments(waveq)
    waveq.set_defaults(func=waveq_cmd.run)

    from lowbit.cli import search_cmd
    releq = sub.add_parser("releq", parents=[common], help="search a per-layer plan with the ReLeQ agent (PPO)",
                           description=search_cmd.RELEQ_DESCRIPTION)
    search_cmd.add_search_arguments(releq, strategy_flag=False)
    releq.set_defaults(func=search_cmd.run_releq_cmd)
    search = sub.add_parser("search", parents=[common], help="per-layer bitwidth search: releq, random or greedy",
                            description=search_cmd.SEARCH_DESCRIPTION)
    search_cmd.add_search_arguments(search, strategy_flag=True)
    search.set_defaults(func=search_cmd.run_search_cmd)

    lister = sub.add_parser("list", parents=[common], help="list models, datasets or quantizers")
    lister.add_argument("what", choices=list_cmd.WHAT)
    lister.set_defaults(func=list_cmd.run)

    demo = sub.add_parser("demo", parents=[common], help="run the main job on the embedded digits data")
    demo.add_argument("--out", default="runs/demo", help="folder for the demo's runs (default runs/demo)")
    demo.add_argument("--fast", action="store_true", help="fewer epochs (for CI)")
    demo.set_defaults(func=demo_cmd.run)

    from lowbit.cli import export_cmd

    export = sub.add_parser("export", parents=[common], help="write a packed low-bit file or an ONNX (QDQ) model",
                            description="Export a run's model: packed k-bit weights (safetensors) or ONNX QDQ.")
    export_cmd.add_export_arguments(export)
    export.set_defaults(func=export_cmd.run_export)

    info = sub.add_parser("info", parents=[common], help="layers, bits and bytes of a packed or ONNX file",
                          description="Show what a file written by 'lowbit export' holds: per-layer bits and bytes, "
                                      "and the compression against float32.")
    export_cmd.add_info_arguments(info)
    info.set_defaults(func=export_cmd.run_info)

    from lowbit.cli import report_cmd

    report = sub.add_parser("report", parents=[common], help="compare run folders in one self-contained HTML file",
                            description=report_cmd.DESCRIPTION)
    report_cmd.add_report_arguments(report)
    report.set_defaults(func=report_cmd.run)

    from lowbit.cli import run_cmd

    runner = sub.add_parser("run", parents=[common], help="run (or --dry-run) one experiment config from configs/",
                            description=run_cmd.DESCRIPTION)
    run_cmd.add_run_arguments(runner)
    runner.set_defaults(func=run_cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded as result.json's "command"
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as exc:  # the step was finished and (lowbit train) a checkpoint written
        Console(stderr=True, soft_wrap=True).print(f"[bold yellow]stopped:[/] {exc}", highlight=False)
        return exc.exit_code
    except UnhealthyRunError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]unhealthy:[/] {exc}", highlight=False)
        return exc.exit_code
    except LowbitError as exc:
        if args.debug:
            raise
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
