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
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from lowbit import __version__
from lowbit.errors import EXIT_SIGINT, LowbitError, TrainingInterrupted, UnhealthyRunError

EXIT_USER_ERROR = 2
EXIT_CODES_HELP = ("exit codes: 0 success, 1 unexpected failure (a bug), 2 user error (one line, no traceback), "
                   "3 --strict and the run failed its health checks (not learning; its folder is written), "
                   "130 interrupted by Ctrl-C (SIGINT), 143 interrupted by SIGTERM. During training either signal "
                   "finishes the current step first; 'lowbit train' also writes a checkpoint, continued by "
                   "'lowbit train --resume --out RUN_DIR'.")


def _commands() -> list[tuple[str, str, str | None, Callable[[argparse.ArgumentParser], None], Callable[..., int]]]:
    """(name, help, description, add its flags, run it) of every subcommand, in the order of --help."""
    from lowbit.cli import bench_cmd, compare_cmd, demo_cmd, export_cmd, list_cmd, report_cmd, run_cmd
    from lowbit.cli.run_commands import run_commands

    runs = [(name, help_text, description, *command) for name, (help_text, description, command)
            in run_commands().items()]
    return [
        *runs,
        ("list", "list models, datasets or quantizers", None,
         lambda p: p.add_argument("what", choices=list_cmd.WHAT), list_cmd.run),
        ("demo", "run the main job on the embedded digits data", None, demo_cmd.add_demo_arguments, demo_cmd.run),
        ("export", "write a packed low-bit file or an ONNX model (integer kernels)",
         "Export a run's model: packed k-bit weights (safetensors) or ONNX (ONNX Runtime integer kernels, or QDQ).",
         export_cmd.add_export_arguments, export_cmd.run_export),
        ("info", "layers, bits and bytes of a packed or ONNX file",
         "Show what a file written by 'lowbit export' holds: per-layer bits and bytes, and the compression "
         "against float32.", export_cmd.add_info_arguments, export_cmd.run_info),
        ("bench", "time the exported model in ONNX Runtime against float and ORT's own int8",
         "Time a run's model in ONNX Runtime: the float model, lowbit's integer export and ORT's quantize_static "
         "U8S8 of the float model, interleaved, at batch 1 and 32; prints ms and ratios to float, writes JSON.",
         bench_cmd.add_bench_arguments, bench_cmd.run),
        ("report", "compare run folders in one self-contained HTML file", report_cmd.DESCRIPTION,
         report_cmd.add_report_arguments, report_cmd.run),
        ("run", "run (or --dry-run) one experiment config from configs/", run_cmd.DESCRIPTION,
         run_cmd.add_run_arguments, run_cmd.run),
        ("compare", "compare methods under one tuning protocol (validation only, seeds, intervals)",
         compare_cmd.DESCRIPTION, compare_cmd.add_compare_arguments, compare_cmd.run),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description="Deep (below 8-bit) quantization for PyTorch.",
                                     epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, description, add_arguments, run in _commands():
        command = sub.add_parser(name, parents=[common], help=help_text, description=description)
        add_arguments(command)
        command.set_defaults(func=run)
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
        # escaped: a message's own brackets ("lowbit[ray]") are not markup
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
