"""What every ``lowbit`` subcommand does with its parsed flags: options from YAML, a resumed run's
config.yaml and the flags (in that precedence), and the command line as the user typed it."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from lowbit.cli.config import given_flags, merge_options, read_yaml
from lowbit.runs.folder import CONFIG_FILE
from lowbit.runs.train_run import TrainOptions


def options_from_args(args: argparse.Namespace, cls: type = TrainOptions):
    """``cls`` from ``--config``, then (with ``--resume``) the run folder's config.yaml, then the flags."""
    layers = []
    if args.config:
        layers.append(read_yaml(args.config))
    if getattr(args, "resume", None) and args.out and (Path(args.out) / CONFIG_FILE).exists():
        saved = read_yaml(Path(args.out) / CONFIG_FILE)
        known = {f for f in cls.__dataclass_fields__}
        layers.append({k: v for k, v in saved.items() if k in known})
    layers.append(given_flags(args))
    return merge_options(cls, layers)


def command_line(args: argparse.Namespace) -> str | None:
    """The command as the user typed it (main() records argv; None falls back to sys.argv)."""
    argv = getattr(args, "argv", None)
    return shlex.join(["lowbit", *argv]) if argv is not None else None
