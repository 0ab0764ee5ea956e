"""``lowbit train``: flags (generated from TrainOptions) -> TrainOptions -> run_train."""

from __future__ import annotations

import argparse

from lowbit.cli.common import command_line, options_from_args
from lowbit.cli.flags import add_option_flags
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_flags(parser, TrainOptions)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args, TrainOptions)
    run_train(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0
