"""``lowbit releq`` and ``lowbit search``: flags (and an optional YAML file) -> SearchOptions -> run_search.

ReLeQ (Elthakeb et al.), METHODS.md section 5: ``lowbit releq`` runs the PPO agent; ``lowbit search
--strategy releq|random|greedy`` runs it or one of its comparators under the same evaluator,
cache and budget.
"""

from __future__ import annotations

import argparse

from lowbit.cli.common import command_line, options_from_args
from lowbit.cli.flags import add_option_flags
from lowbit.errors import ConfigError
from lowbit.runs.search_run import SearchOptions, run_search
from lowbit.train import Reporter

RELEQ_DESCRIPTION = """ReLeQ: a PPO agent picks each layer's bitwidth (first and last layers pinned at 8),
rewarded for few bits at kept accuracy; each plan's accuracy comes from a short quantized fine-tune
measured on a validation split held out from train (cached on disk). The best plan gets a full
fine-tune and one test-set evaluation."""

SEARCH_DESCRIPTION = """Per-layer bitwidth search with the ReLeQ agent or a comparator (random search,
greedy layer-by-layer descent), all under the same evaluator, cache, evaluation budget and reward.
The best plan by reward gets a full fine-tune and one test-set evaluation."""


def add_search_arguments(parser: argparse.ArgumentParser, strategy_flag: bool) -> None:
    """The flags of ``lowbit search`` (with ``--strategy``) or ``lowbit releq`` (without)."""
    add_option_flags(parser, SearchOptions, skip=() if strategy_flag else ("strategy",))


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
