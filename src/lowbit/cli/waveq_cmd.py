"""``lowbit waveq``: flags (and an optional YAML file) -> WaveQOptions -> run_waveq."""

from __future__ import annotations

import argparse

from lowbit.cli.common import add_strict_flag, command_line, options_from_args
from lowbit.data import list_datasets
from lowbit.models import list_models
from lowbit.quant.registry import SCALE_CHOICES
from lowbit.recipes import QUANTIZED_FINETUNE, WAVEQ_PHASE
from lowbit.reg.waveq import DOMAINS, ROUNDINGS, WEIGHTINGS
from lowbit.runs.waveq_run import WAVEQ_QUANTIZERS, WaveQOptions, run_waveq
from lowbit.train import Reporter
from lowbit.train.config import OPTIMIZERS

DESCRIPTION = """WaveQ / SINAREQ: learn each layer's bitwidth and scale through the period of a
sinusoidal regularizer (float forward pass, three-phase schedule: train, learn bits, freeze bits and
snap weights), then quantize at the learned integer plan and fine-tune with the chosen quantizer."""


def add_waveq_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lowbit waveq`` (defaults None: unset flags don't override the YAML file)."""
    parser.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    parser.add_argument("--model", help=f"zoo model: {', '.join(list_models())}")
    parser.add_argument("--dataset", help=f"dataset: {', '.join(list_datasets())} (default digits)")
    parser.add_argument("--data-dir", help="folder with the dataset's files (file-based datasets)")
    parser.add_argument("--init", help="float weights to start from: a run folder or model file (recommended)")
    parser.add_argument("--quantizer", choices=WAVEQ_QUANTIZERS,
                        help="level geometry of the sinusoid and the fine-tune's quantizer (default dorefa)")
    parser.add_argument("--scale", choices=SCALE_CHOICES,
                        help="fine-tune weight output scale (default learned, started at WaveQ's alpha)")
    parser.add_argument("--domain", choices=DOMAINS, help="sinusoid on the quantizer's own map at scale alpha "
                        "(aligned, default) or on w/alpha (raw, METHODS' formula; equal except for DoReFa)")
    parser.add_argument("--abits", type=int, help="activation bits for the fine-tune, 1..8 or 32 (default 32)")
    parser.add_argument("--budget", type=float, metavar="AVG_BITS",
                        help="target average bits over all quantized layers (pinned first/last included); "
                             "without it the bit pressure is the paper's sum of bits")
    parser.add_argument("--weighting", choices=WEIGHTINGS,
                        help="budget averaged over layers (avg_bits, default) or parameters (weighted_bits)")
    parser.add_argument("--lambda-w", type=float, help="weight of the sinusoid (default 1.0)")
    parser.add_argument("--lambda-beta", type=float, help="weight c_beta of the bit pressure (default 0.05)")
    parser.add_argument("--bits-min", type=float, help="lowest bitwidth a layer may learn (default 2)")
    parser.add_argument("--bits-max", type=float, help="highest bitwidth, and beta's start (default 8)")
    parser.add_argument("--rounding", choices=ROUNDINGS, help="continuous beta -> integer bits (default round)")
    parser.add_argument("--epochs", type=int, help="WaveQ phase epochs (default 10)")
    parser.add_argument("--finetune-epochs", type=int, help="quantized fine-tune epochs at the plan (default 5)")
    parser.add_argument("--lr", type=float, help=f"WaveQ phase learning rate (default {WAVEQ_PHASE[True].lr:g} "
                        f"with --init, else {WAVEQ_PHASE[False].lr:g})")
    parser.add_argument("--finetune-lr", type=float,
                        help=f"fine-tune learning rate (default {QUANTIZED_FINETUNE.lr:g})")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--out", help="run folder to write")
    add_strict_flag(parser)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args, WaveQOptions)
    run_waveq(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0
