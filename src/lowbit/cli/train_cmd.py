"""``lowbit train``: flags -> TrainOptions -> run_train."""

from __future__ import annotations

import argparse

from lowbit.cli.common import add_strict_flag, command_line, options_from_args
from lowbit.data import list_datasets
from lowbit.models import list_models
from lowbit.quant.registry import SCALE_CHOICES, list_quantizers
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter
from lowbit.train.config import OPTIMIZERS, SCHEDULES


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that trains (defaults None: unset flags don't override YAML)."""
    parser.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    parser.add_argument("--model", help=f"zoo model: {', '.join(list_models())}")
    parser.add_argument("--dataset", help=f"dataset: {', '.join(list_datasets())}")
    parser.add_argument("--data-dir", help="folder with the dataset's files (file-based datasets)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="learning rate (default: the quantizer's recipe, README "
                        "'Default recipes')")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the quantizer's recipe")
    parser.add_argument("--warmup-epochs", type=float, help="linear LR warm-up over this many epochs "
                        "(default: the quantizer's recipe)")
    parser.add_argument("--schedule", choices=SCHEDULES, help="LR schedule (default cosine)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--quantizer", help=f"{', '.join(list_quantizers())} (default none = float)")
    parser.add_argument("--wbits", type=int, help="weight bits 1..8 or 32 (first/last layers stay 8)")
    parser.add_argument("--abits", type=int, help="activation bits 1..8 or 32 (default 32)")
    parser.add_argument("--scale", choices=SCALE_CHOICES, help="weight output scale (default auto)")
    parser.add_argument("--plan", help="plan JSON file (per-layer bits); instead of --wbits/--abits")
    parser.add_argument("--width-mult", type=float, help="widen the model (WRPN), default 1.0")
    parser.add_argument("--init", help="float weights to start from: a checkpoint or a run folder")
    parser.add_argument("--out", help="run folder to write (default runs/MODEL-DATASET-METHOD-sSEED)")
    parser.add_argument("--resume", action="store_true", default=None, help="continue an interrupted run in --out")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; "
                        "use 1 when other jobs share the cores)")
    parser.add_argument("--sinreq", type=float, metavar="LAMBDA", help="add the SinReQ regularizer with weight LAMBDA")
    parser.add_argument("--sinreq-schedule", choices=("constant", "warmup", "three-phase"),
                        help="SinReQ lambda schedule (default constant)")
    parser.add_argument("--sinreq-domain", choices=("aligned", "raw"),
                        help="aligned: through the quantizer's u(w) (default); raw: on the raw weight")
    parser.add_argument("--sinreq-mode", choices=("qat", "pre"),
                        help="qat: on top of quantized training (default); pre: float phase, then quantize")
    parser.add_argument("--sinreq-train-quantizer", action="store_true", default=None,
                        help="let SinReQ's gradient also move learned scales/steps (off by default: the penalty "
                        "can then shrink itself by stretching the grid until every weight rounds to 0)")
    parser.add_argument("--val-fraction", type=float,
                        help="hold out this share of the training split for validation (default 0)")
    parser.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard scalars")
    add_strict_flag(parser)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    run_train(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0
