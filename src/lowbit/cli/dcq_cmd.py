"""``lowbit dcq``: flags (and an optional YAML file) -> DcqOptions -> run_dcq."""

from __future__ import annotations

import argparse

from lowbit.cli.common import add_strict_flag, command_line, options_from_args
from lowbit.data import list_datasets
from lowbit.distill import BALANCES, FEATURE_LOSSES, MODES
from lowbit.models import list_models
from lowbit.quant.registry import SCALE_CHOICES, list_quantizers
from lowbit.recipes import DCQ_SECTIONS, OPTIMIZER_LR
from lowbit.runs.dcq_run import DcqOptions, run_dcq
from lowbit.train import Reporter
from lowbit.train.config import OPTIMIZERS, SCHEDULES

DESCRIPTION = """Divide-and-conquer quantization (DCQ): cut a float teacher into sections, train each
quantized student section to reproduce the teacher's features at its boundary (the last one on the
labels), in parallel worker processes if asked, then stitch, evaluate and optionally fine-tune."""


def add_dcq_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lowbit dcq`` (defaults None: unset flags don't override the YAML file)."""
    quantizers = ", ".join(q for q in list_quantizers() if q != "none")
    parser.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    parser.add_argument("--teacher", help="float teacher: a run folder or a model file")
    parser.add_argument("--model", help=f"instead of --teacher: train this zoo model in float first "
                        f"({', '.join(list_models())})")
    parser.add_argument("--dataset", help=f"dataset: {', '.join(list_datasets())} (default digits)")
    parser.add_argument("--data-dir", help="folder with the dataset's files (file-based datasets)")
    parser.add_argument("--sections", type=int, metavar="K", help="cut into K sections automatically")
    parser.add_argument("--split-at", metavar="A,B,...",
                        help="instead of --sections: top-level child names that start sections 2..K")
    parser.add_argument("--balance", help=f"automatic split balances: {', '.join(BALANCES)} (default params)")
    parser.add_argument("--quantizer", help=f"{quantizers} (default dorefa)")
    parser.add_argument("--wbits", type=int, help="weight bits 1..8 (first/last layers stay 8)")
    parser.add_argument("--abits", type=int, help="activation bits 1..8 or 32 (default 32)")
    parser.add_argument("--scale", choices=SCALE_CHOICES, help="weight output scale (default learned: a section "
                        "must match the teacher's feature magnitudes; auto = lowbit train's default)")
    parser.add_argument("--plan", help="plan JSON file (per-layer bits); instead of --wbits/--abits")
    parser.add_argument("--mode", help=f"{' or '.join(MODES)}: section inputs from the teacher (the paper, "
                        "default) or from the already trained student sections")
    parser.add_argument("--loss", help=f"feature loss: {', '.join(FEATURE_LOSSES)} (default mse)")
    parser.add_argument("--workers", type=int, help="train sections in N processes (independent mode)")
    parser.add_argument("--epochs", type=int, help="epochs per section (default 10)")
    parser.add_argument("--finetune-epochs", type=int, help="end-to-end quantized fine-tune after stitching "
                        "(default 0)")
    parser.add_argument("--finetune-lr", type=float, help="fine-tune learning rate (default: the sections')")
    parser.add_argument("--teacher-epochs", type=int, help="float teacher epochs with --model (default 10)")
    parser.add_argument("--teacher-lr", type=float, help="float teacher learning rate with --model")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help=f"section learning rate (default {DCQ_SECTIONS.describe()}; "
                        f"{OPTIMIZER_LR['adam']:g} with --optimizer adam)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {DCQ_SECTIONS.optimizer}")
    parser.add_argument("--schedule", choices=SCHEDULES, help="LR schedule (default cosine)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--kd-weight", type=float, help="logit distillation weight on the last section (default 0)")
    parser.add_argument("--kd-temperature", type=float, help="logit distillation temperature (default 4)")
    parser.add_argument("--feature-cache", metavar="DIR",
                        help="cache the teacher features in DIR (memory-mapped, reused when they match)")
    parser.add_argument("--no-feature-norm", dest="feature_norm", action="store_false", default=None,
                        help="plain feature loss (default: in units of the teacher features' RMS at each boundary)")
    parser.add_argument("--width-mult", type=float, help="widen the model (with --model), default 1.0")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="CPU threads for torch in the main process (workers use 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--out", help="run folder to write")
    add_strict_flag(parser)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args, DcqOptions)
    run_dcq(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0
