"""``lowbit dcq``: flags (generated from DcqOptions) -> DcqOptions -> run_dcq."""

from __future__ import annotations

import argparse

from lowbit.cli.common import command_line, options_from_args
from lowbit.cli.flags import add_option_flags
from lowbit.runs.dcq_run import DcqOptions, run_dcq
from lowbit.train import Reporter

DESCRIPTION = """Divide-and-conquer quantization (DCQ): cut a float teacher into sections, train each
quantized student section to reproduce the teacher's features at its boundary (the last one on the
labels), in parallel worker processes if asked, then stitch, evaluate and optionally fine-tune."""


def add_dcq_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_flags(parser, DcqOptions)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args, DcqOptions)
    run_dcq(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0
