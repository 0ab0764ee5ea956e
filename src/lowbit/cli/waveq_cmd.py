"""``lowbit waveq``: flags (generated from WaveQOptions) -> WaveQOptions -> run_waveq."""

from __future__ import annotations

import argparse

from lowbit.cli.common import command_line, options_from_args
from lowbit.cli.flags import add_option_flags
from lowbit.runs.waveq_run import WaveQOptions, run_waveq
from lowbit.train import Reporter

DESCRIPTION = """WaveQ / SINAREQ: learn each layer's bitwidth and scale through the period of a
sinusoidal regularizer (float forward pass, three-phase schedule: train, learn bits, freeze bits and
snap weights), then quantize at the learned integer plan and fine-tune with the chosen quantizer."""


def add_waveq_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_flags(parser, WaveQOptions)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args, WaveQOptions)
    run_waveq(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0
