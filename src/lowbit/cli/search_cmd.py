"""``lowbit releq`` and ``lowbit search``: flags (and an optional YAML file) -> SearchOptions -> run_search.

ReLeQ (Elthakeb et al.), METHODS.md section 5: ``lowbit releq`` runs the PPO agent; ``lowbit search
--strategy releq|random|greedy`` runs it or one of its comparators under the same evaluator,
cache and budget.
"""

from __future__ import annotations

import argparse

from lowbit.cli.common import add_strict_flag, command_line, options_from_args
from lowbit.data import list_datasets
from lowbit.errors import ConfigError
from lowbit.models import list_models
from lowbit.quant.registry import SCALE_CHOICES, list_quantizers
from lowbit.recipes import QUANTIZED_FINETUNE, SEARCH_EVALUATION
from lowbit.runs.search_run import POLICIES, STRATEGIES, SearchOptions, run_search
from lowbit.train import Reporter

RELEQ_DESCRIPTION = """ReLeQ: a PPO agent picks each layer's bitwidth (first and last layers pinned at 8),
rewarded for few bits at kept accuracy; each plan's accuracy comes from a short quantized fine-tune
measured on a validation split held out from train (cached on disk). The best plan gets a full
fine-tune and one test-set evaluation."""

SEARCH_DESCRIPTION = """Per-layer bitwidth search with the ReLeQ agent or a comparator (random search,
greedy layer-by-layer descent), all under the same evaluator, cache, evaluation budget and reward.
The best plan by reward gets a full fine-tune and one test-set evaluation."""


def add_search_arguments(parser: argparse.ArgumentParser, strategy_flag: bool) -> None:
    """The flags of ``lowbit search`` (with ``--strategy``) or ``lowbit releq`` (without).
    Defaults are None: unset flags don't override the YAML file."""
    quantizers = ", ".join(q for q in list_quantizers() if q != "none")
    parser.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    if strategy_flag:
        parser.add_argument("--strategy", help=f"{', '.join(STRATEGIES)} (default releq)")
    parser.add_argument("--model", help=f"zoo model: {', '.join(list_models())}")
    parser.add_argument("--dataset", help=f"dataset: {', '.join(list_datasets())} (default digits)")
    parser.add_argument("--data-dir", help="folder with the dataset's files (file-based datasets)")
    parser.add_argument("--init", help="float model to search on: a run folder or model file "
                        "(default: train one into OUT/float first)")
    parser.add_argument("--float-epochs", type=int, help="float training epochs without --init (default 10)")
    parser.add_argument("--quantizer", help=f"{quantizers} (default dorefa)")
    parser.add_argument("--scale", choices=SCALE_CHOICES, help="weight output scale (default auto)")
    parser.add_argument("--bit-choices", metavar="B,B,...", help="weight bits to choose from (default 2,3,4,5,8)")
    parser.add_argument("--search-acts", action="store_true", default=None,
                        help="search activation bits too (default: activations stay float)")
    parser.add_argument("--act-choices", metavar="B,B,...", help="activation bits with --search-acts "
                        "(default: --bit-choices)")
    parser.add_argument("--no-pin", dest="pin_first_last", action="store_false", default=None,
                        help="search the first and last layers too (default: pinned at 8 bits)")
    parser.add_argument("--weighted-state", action="store_true", default=None,
                        help="weight the bits state (and reward) by parameter count")
    parser.add_argument("--max-evals", type=int, metavar="N", help="new plan evaluations (default 60)")
    parser.add_argument("--time-limit", type=float, metavar="S", help="stop starting evaluations after S seconds")
    parser.add_argument("--policy", help=f"ReLeQ's PPO policy: {', '.join(POLICIES)} (default mlp)")
    parser.add_argument("--reward-th", type=float, help="reward: accuracy threshold th (default 0.4)")
    parser.add_argument("--reward-a", type=float, help="reward: bits exponent a (default 0.8)")
    parser.add_argument("--reward-b", type=float, help="reward: accuracy exponent b (default 1)")
    parser.add_argument("--eval-steps", type=int, help="fine-tune steps per evaluated plan (default 200)")
    parser.add_argument("--eval-train-size", type=int, help="training samples for those steps (default 2000)")
    parser.add_argument("--eval-lr", type=float, help=f"their learning rate (default {SEARCH_EVALUATION.describe()})")
    parser.add_argument("--val-fraction", type=float,
                        help="share of the train split held out to measure plans (default 0.2; never test)")
    parser.add_argument("--finetune-epochs", type=int, help="full fine-tune of the best plan (default 10)")
    parser.add_argument("--finetune-lr", type=float,
                        help=f"its learning rate (default {QUANTIZED_FINETUNE.lr:g}, lowbit.recipes)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="evaluate plans in N worker processes, one torch thread each (default 1): random "
                        "search ends as the serial one (at --threads 1) does; ReLeQ steps N environments "
                        "together (N must divide its 8 episodes per update); greedy stays serial")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--out", help="run folder to write (default runs/MODEL-DATASET-STRATEGY-sSEED)")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue the search in --out, reusing its evaluated plans")
    add_strict_flag(parser, "the final fine-tune")


def run_search_cmd(args: argparse.Namespace) -> int:
    options = options_from_args(args, SearchOptions)
    run_search(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0


def run_releq_cmd(args: argparse.Namespace) -> int:
    options = options_from_args(args, SearchOptions)
    if options.strategy != "releq":
        raise ConfigError(f"lowbit releq runs the ReLeQ agent, but the configuration says strategy "
                          f"{options.strategy!r}; use lowbit search --strategy {options.strategy}")
    run_search(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
    return 0
