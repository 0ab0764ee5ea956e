"""``lowbit run CONFIG.yaml [--set key=value ...] [--dry-run] [--out DIR]``: one experiment config
(``configs/``) -> the options of its command -> a dry run or the run.

This module reads the YAML files (DESIGN.md: only the CLI reads config files) and merges options;
``lowbit.runs.config_run`` holds the rest (structure, typed overrides, dependencies; the dry run is
``lowbit.runs.config_dry_run``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console

from lowbit.cli.config import merge_options, read_yaml
from lowbit.cli.config import command_line
from lowbit.errors import ConfigError, LowbitError
from lowbit.runs.config_dry_run import dry_run
from lowbit.runs.config_run import COMMANDS, Experiment, check_mapping, link_dependency, parse_overrides
from lowbit.runs.config_run import resolve_out, run_experiment, validate_options
from lowbit.train import Reporter

DESCRIPTION = (
    "Run one experiment config (configs/<method>/*.yaml): 'command' names the options (train, waveq, dcq, "
    "search), 'options' fills them, 'paper' records the abstract's claim, 'requires' names the float run "
    "it starts from (run that config first). --set key=value overrides an option, typed by the option "
    "(null for none); --dry-run builds data (a synthetic stand-in where the files are absent), model, "
    "quantizer and method without training and prints a summary.")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment config (YAML), e.g. configs/sinreq/resnet20-cifar10-dorefa.yaml")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", metavar="KEY=VALUE",
                        help="override an option (repeatable): --set wbits=3 --set seed=1, or --set wbits=3 seed=1")
    parser.add_argument("--dry-run", action="store_true",
                        help="build data, model, quantizer and method, print a summary, train nothing")
    parser.add_argument("--out", help="run folder (overrides the config's 'out')")


def _flatten(groups: Iterable[Sequence[str]] | None) -> list[str]:
    return [text for group in groups or () for text in group]


def load_experiment(path: str | Path, overrides: Sequence[str] = (), out: str | None = None,
                    _chain: tuple[str, ...] = ()) -> Experiment:
    """Read, merge and validate one experiment config (and the config it requires, without overrides)."""
    path = Path(path)
    source = path.as_posix()
    if source in _chain:
        raise ConfigError(f"{source}: 'requires' goes round in a circle ({' -> '.join([*_chain, source])})")
    command, options, paper, requires = check_mapping(read_yaml(path), source)
    cls = COMMANDS[command].options
    given = parse_overrides(cls, list(overrides))
    if out is not None:
        given["out"] = out
    try:
        merged = merge_options(cls, [options, given])
        resolve_out(merged)
        validate_options(merged)
    except LowbitError as exc:  # the same kind of error, naming the file
        try:
            error = type(exc)(f"{source}: {exc}")
        except TypeError:
            error = ConfigError(f"{source}: {exc}")
        raise error from None
    exp = Experiment(command, merged, source=source, paper=paper, overrides=given)
    if requires is not None:
        dep_path = path.parent / requires
        if not dep_path.is_file():
            raise ConfigError(f"{source}: requires {requires}, but {dep_path.as_posix()} is not a file")
        link_dependency(exp, load_experiment(_normal(dep_path), _chain=(*_chain, source)))
    return exp


def _normal(path: Path) -> Path:
    """``configs/sinreq/../float/x.yaml`` -> ``configs/float/x.yaml`` (for messages), keeping it relative."""
    parts: list[str] = []
    for part in path.parts:
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return Path(*parts) if parts else Path(".")


def run(args: argparse.Namespace) -> int:
    exp = load_experiment(args.config, _flatten(args.overrides), args.out)
    reporter = Reporter(quiet=args.quiet)
    if args.dry_run:
        report = dry_run(exp, reporter)
        Console(soft_wrap=True).print(report.summary, highlight=False, markup=False)
        return 0
    run_experiment(exp, reporter, command=command_line(args))
    return 0
