"""Command-line flags generated from an options dataclass (``lowbit.runs.options.option``).

Each field becomes ``--field-name`` typed by its annotation, with its help text and its default
said once, where the field is declared. Every flag's argparse default is None, so a flag the user
did not give never overrides the YAML file (``lowbit.cli.config.options_from_args``). A bool that
defaults to False is a switch; one that defaults to True gets ``--no-NAME``. Choices are listed in
the help and checked by the options' ``validate`` (an unknown one gets a "did you mean"), not by
argparse.
"""

from __future__ import annotations

import argparse
import dataclasses

from lowbit.runs.option_values import field_types
from lowbit.runs.options import choices_of


def add_option_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                     config: bool = True) -> None:
    """A flag per field of ``cls`` (except ``skip``), plus ``--config`` for a YAML file of the same keys."""
    if config:
        parser.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            _add_flag(parser, cls, f)


def _add_flag(parser: argparse.ArgumentParser, cls: type, f: dataclasses.Field) -> None:
    meta = f.metadata
    types = [t for t in field_types(cls, f.name) if t is not type(None)]
    kind = types[0] if types else str
    help_text = _help(f)
    if kind is bool:
        name = meta.get("flag") or (f"--no-{_dashed(f.name)}" if f.default is True else f"--{_dashed(f.name)}")
        parser.add_argument(name, dest=f.name, action="store_false" if f.default is True else "store_true",
                            default=None, help=help_text)
        return
    parser.add_argument(meta.get("flag") or f"--{_dashed(f.name)}", dest=f.name, type=kind, default=None,
                        metavar=meta.get("metavar"), help=help_text)


def _help(f: dataclasses.Field) -> str:
    meta = f.metadata
    text = meta.get("help", "")
    named = choices_of(f)
    if named:
        text += f": {', '.join(named)}"
    default = meta.get("default_text")
    if default is None and f.default is not None and f.default is not False and f.default is not dataclasses.MISSING:
        default = f.default if f.default is not True else "on"
    return f"{text} (default {default})" if default is not None else text


def _dashed(name: str) -> str:
    return name.replace("_", "-")


__all__ = ["add_option_flags"]
