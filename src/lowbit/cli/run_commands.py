"""``lowbit train``, ``waveq``, ``dcq``, ``search`` and ``releq``: flags generated from each command's
options dataclass (``lowbit.cli.flags``), merged with an optional YAML file (``--config``) and a
resumed run's config.yaml (``lowbit.cli.config.options_from_args``), then its ``run_*`` function.

ReLeQ (Elthakeb et al.), METHODS.md section 5: ``lowbit releq`` runs the PPO agent; ``lowbit search
--strategy releq|random|greedy`` runs it or one of its comparators under the same evaluator,
cache and budget.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lowbit.cli.config import command_line, options_from_args
from lowbit.cli.flags import add_option_flags
from lowbit.errors import ConfigError
from lowbit.train import Reporter

TRAIN = "Train a zoo model, float or quantization-aware, and write a run folder."

DCQ = """Divide-and-conquer quantization (DCQ): cut a float teacher into sections, train each
quantized student section to reproduce the teacher's features at its boundary (the last one on the
labels), in parallel worker processes if asked, then stitch, evaluate and optionally fine-tune."""

WAVEQ = """WaveQ / SINAREQ: learn each layer's bitwidth and scale through the period of a
sinusoidal regularizer (float forward pass, three-phase schedule: train, learn bits, freeze bits and
snap weights), then quantize at the learned integer plan and fine-tune with the chosen quantizer."""

RELEQ = """ReLeQ: a PPO agent picks each layer's bitwidth (first and last layers pinned at 8),
rewarded for few bits at kept accuracy; each plan's accuracy comes from a short quantized fine-tune
measured on a validation split held out from train (cached on disk). The best plan gets a full
fine-tune and one test-set evaluation."""

SEARCH = """Per-layer bitwidth search with the ReLeQ agent or a comparator (random search,
greedy layer-by-layer descent, Optuna's TPE, or HAWQ: Hessian-trace sensitivity and an integer
program under a --budget-bits/--budget-bytes/--budget-bops budget), all under the same evaluator,
cache, evaluation budget and reward. The best plan by reward gets a full fine-tune and one
test-set evaluation."""

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def options_command(cls: type, run: Callable[..., Any], skip: tuple[str, ...] = (),
                    check: Callable[[Any], None] | None = None) -> Command:
    """(add the flags of ``cls``, run ``run(options)``) for one subcommand."""
    def add(parser: argparse.ArgumentParser) -> None:
        add_option_flags(parser, cls, skip=skip)

    def execute(args: argparse.Namespace) -> int:
        options = options_from_args(args, cls)
        if check is not None:
            check(options)
        run(options, reporter=Reporter(quiet=args.quiet), command=command_line(args))
        return 0

    return add, execute


def _releq_only(options: Any) -> None:
    if options.strategy != "releq":
        raise ConfigError(f"lowbit releq runs the ReLeQ agent, but the configuration says strategy "
                          f"{options.strategy!r}; use lowbit search --strategy {options.strategy}")


def run_commands() -> dict[str, tuple[str, str, Command]]:
    """name -> (help, description, (add flags, run)) of every run command."""
    from lowbit.runs.dcq_run import DcqOptions, run_dcq
    from lowbit.runs.search_run import SearchOptions, run_search
    from lowbit.runs.train_run import TrainOptions, run_train
    from lowbit.runs.waveq_run import WaveQOptions, run_waveq

    return {
        "train": ("train a float or quantized model", TRAIN, options_command(TrainOptions, run_train)),
        "dcq": ("quantize a float teacher by divide-and-conquer distillation", DCQ,
                options_command(DcqOptions, run_dcq)),
        "waveq": ("learn a per-layer plan (bits and scale) with WaveQ", WAVEQ,
                  options_command(WaveQOptions, run_waveq)),
        "releq": ("search a per-layer plan with the ReLeQ agent (PPO)", RELEQ,
                  options_command(SearchOptions, run_search, skip=("strategy",), check=_releq_only)),
        "search": ("per-layer bitwidth search: releq, random, greedy, tpe or hawq", SEARCH,
                   options_command(SearchOptions, run_search)),
    }
