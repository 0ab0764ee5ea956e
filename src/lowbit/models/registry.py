"""The float model registry (timm-style): a name maps to a builder and a :class:`ModelInfo`.

Models know nothing about quantization; quantization passes take a built model and rewrite it.
Every registered model is an ``nn.Sequential`` (its forward chains its top-level children), built
from Conv1d/Conv2d/Linear, BatchNorm, ReLU, pooling and Flatten modules, with the first
conv/linear seeing the input and the last one producing the logits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lowbit.errors import ConfigError, unknown_name

KINDS = ("image", "sequence")

ModelBuilder = Callable[..., nn.Module]
"""Called as ``builder(num_classes=, in_channels=, input_size=, width_mult=)``."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model expects: the input kind and sizes, and a one-line description.

    ``default_input_size`` and ``min_input_size`` are the image side length (images are square)
    or the sequence length; ``min_input_size`` is the smallest the model accepts.
    """

    name: str
    kind: str
    default_input_size: int
    min_input_size: int
    default_in_channels: int
    description: str


_INFOS: dict[str, ModelInfo] = {}
_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(
    name: str,
    *,
    kind: str,
    default_input_size: int,
    min_input_size: int,
    default_in_channels: int,
    description: str,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(num_classes, in_channels, input_size, width_mult)``."""
    if kind not in KINDS:
        raise ValueError(f"model {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if not 1 <= min_input_size <= default_input_size:
        raise ValueError(f"model {name!r}: need 1 <= min_input_size <= default_input_size")
    if default_in_channels < 1:
        raise ValueError(f"model {name!r}: default_in_channels must be >= 1")
    info = ModelInfo(
        name, kind, default_input_size, min_input_size, default_in_channels, description
    )

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _INFOS[name] = info
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_BUILDERS)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; unknown names raise UnknownNameError."""
    if not isinstance(name, str) or name not in _INFOS:
        raise unknown_name("model", str(name), list_models())
    return _INFOS[name]


def _check_int(model: str, arg: str, value: object, low: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(
            f"model {model!r}: {arg} must be an integer >= {low}{what}, got {value!r}"
        )
    return int(value)


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    input_size: int | None = None,
    width_mult: float = 1.0,
) -> nn.Module:
    """Build a fresh float model; ``None`` means the model's default (see :func:`model_info`).

    ``width_mult`` scales the hidden channel and feature counts (rounded, at least 1), never the
    input channels or ``num_classes``. Bad arguments raise :class:`~lowbit.errors.ConfigError`.
    """
    info = model_info(name)
    unit = "image side length" if info.kind == "image" else "sequence length"
    num_classes = _check_int(name, "num_classes", num_classes, 1)
    in_channels = _check_int(
        name, "in_channels", info.default_in_channels if in_channels is None else in_channels, 1
    )
    input_size = _check_int(
        name,
        "input_size",
        info.default_input_size if input_size is None else input_size,
        info.min_input_size,
        f" ({unit})",
    )
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, numbers.Real)
        or not math.isfinite(width_mult)
        or width_mult <= 0
    ):
        raise ConfigError(
            f"model {name!r}: width_mult must be a finite number > 0, got {width_mult!r}"
        )
    return _BUILDERS[name](
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        width_mult=float(width_mult),
    )
