"""Typing option values by the options dataclass's annotations: the one parser that YAML files,
command-line flags (``lowbit.cli.config``) and ``--set key=value`` overrides (``lowbit run``) share.

Fields are annotated with int, float, str, bool and optional None (``int | None``). A value from
YAML or argparse is checked and converted (:func:`coerce`); a ``key=value`` text is parsed
(:func:`parse_override`): ``null``/``none``/``~`` or nothing give None where the field allows it,
bools take true/false/yes/no/on/off/1/0. Unknown keys are errors with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from lowbit.errors import ConfigError, did_you_mean

T = TypeVar("T")

_NONE_WORDS = {"null", "none", "~", ""}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def field_types(cls: type, key: str) -> tuple[type, ...]:
    """The types field ``key`` of dataclass ``cls`` allows (NoneType included when optional)."""
    hint = typing.get_type_hints(cls)[key]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(typing.get_args(hint))
    return (hint,)


def field_name(cls: type, raw_key: str, where: str = "") -> str:
    """``raw_key`` with dashes as underscores, checked against ``cls``'s fields."""
    key = str(raw_key).strip().replace("-", "_")
    fields = [f.name for f in dataclasses.fields(cls)]
    if key not in fields:
        raise ConfigError(f"{where}unknown option {str(raw_key).strip()!r}{did_you_mean(key, fields)}; "
                          f"known options: {', '.join(sorted(fields))}")
    return key


def coerce(key: str, value: Any, allowed: tuple[type, ...]) -> Any:
    """Check a YAML or flag ``value`` against the ``allowed`` types of option ``key``."""
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"option {key!r} cannot be empty")
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"option {key!r} is out of range: {value}") from None
    if str in allowed and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    names = "/".join(t.__name__ for t in allowed if t is not type(None))
    raise ConfigError(f"option {key!r} must be {names}, got {value!r}")


def merge_options(cls: type[T], layers: list[dict[str, Any]]) -> T:
    """Build ``cls`` from dict layers, later layers winning; validates keys and types."""
    values: dict[str, Any] = {}
    for layer in layers:
        for raw_key, value in layer.items():
            key = field_name(cls, raw_key)
            values[key] = coerce(key, value, field_types(cls, key))
    return cls(**values)


def parse_override(cls: type, text: str) -> tuple[str, Any]:
    """``"key=value"`` -> (field name, value typed by ``cls``'s field annotation)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set takes key=value, got {text!r}")
    raw_key, value = text.split("=", 1)
    key = field_name(cls, raw_key, "--set: ")
    allowed = field_types(cls, key)
    word = value.strip()
    if word.lower() in _NONE_WORDS and type(None) in allowed:
        return key, None
    if bool in allowed and word.lower() in _BOOL_WORDS:
        return key, _BOOL_WORDS[word.lower()]
    if int in allowed:
        try:
            return key, int(word)
        except ValueError:
            pass
    if float in allowed:
        try:
            number = float(word)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return key, number
    if str in allowed:
        return key, value
    names = "/".join(t.__name__ for t in allowed)
    raise ConfigError(f"--set {raw_key.strip()}={value!r}: {key} must be {names}")


def parse_overrides(cls: type, texts: list[str]) -> dict[str, Any]:
    """Several ``key=value`` texts (later ones win)."""
    return dict(parse_override(cls, text) for text in texts)
