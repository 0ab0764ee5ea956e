"""Merge a YAML config file with command-line flags into a validated options dataclass.

Precedence: the dataclass defaults < the config file (< a resumed run's config.yaml, when
resuming) < flags given on the command line. Keys may use dashes or underscores. An unknown key
is an error with a "did you mean"; a value of the wrong type is an error naming the key; a key
given twice in one file is an error. The file is read by PyYAML's safe loader: a ``!!python/...``
tag is refused, never executed. Values are typed by ``lowbit.runs.option_values``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import yaml

from lowbit.errors import ConfigError
from lowbit.runs.folder import CONFIG_FILE
from lowbit.runs.option_values import merge_options

__all__ = ["command_line", "given_flags", "merge_options", "options_from_args", "read_yaml"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that repeats a key (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults': later keys override it
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:  # its str() spans several lines; the CLI prints one
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"cannot read config {path}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"cannot read config {path}: nested too deeply") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors let these through for bad scalars: 2001-02-30, !!int 0x, !!bool maybe
        raise ConfigError(f"cannot read config {path}: invalid YAML value ({type(exc).__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of option: value, got {type(data).__name__}")
    return data


def given_flags(args: argparse.Namespace, skip: tuple[str, ...] = ("config", "command", "func", "quiet", "debug")
                ) -> dict[str, Any]:
    """The flags the user actually gave (argparse defaults are None); ``argv`` is main()'s record."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in skip and k != "argv"}


def options_from_args(args: argparse.Namespace, cls: type) -> Any:
    """``cls`` from ``--config``, then (with ``--resume``) the run folder's config.yaml, then the flags."""
    layers = []
    if args.config:
        layers.append(read_yaml(args.config))
    if getattr(args, "resume", None) and args.out and (Path(args.out) / CONFIG_FILE).exists():
        saved = read_yaml(Path(args.out) / CONFIG_FILE)
        layers.append({k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
    layers.append(given_flags(args))
    return merge_options(cls, layers)


def command_line(args: argparse.Namespace) -> str | None:
    """The command as the user typed it (main() records argv; None falls back to sys.argv)."""
    argv = getattr(args, "argv", None)
    return shlex.join(["lowbit", *argv]) if argv is not None else None
