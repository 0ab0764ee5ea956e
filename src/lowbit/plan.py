"""Plan: the per-layer bit assignment every method reads and writes (METHODS.md section 6).

A plan maps quantizable layer names (``model.named_modules()`` names of Conv1d/Conv2d/Linear) to
bits for weights and for the activations entering the layer. Bits are 1..8, or 32 = keep float.

Precedence, decided separately for ``weight`` and ``act`` (the first rule that sets the field wins):

1. an entry whose pattern equals the layer name exactly;
2. the first/last pin (``first_last``, default 8 bits): the first and the last quantizable layer.
   The first layer's input is the network input, so its activation bits stay 32 unless an exact
   entry says otherwise;
3. glob entries (``fnmatch``, case-sensitive; ``*`` also crosses dots); if several match, the
   one listed last wins;
4. the plan's ``default``.

An entry that matches no layer of the model is an error (a typo must not be ignored).

On disk (JSON)::

    {"format": "lowbit-plan", "version": 1,
     "default": {"weight": 2, "act": 32},
     "first_last": {"weight": 8, "act": 8},            (or null: no pin; absent: this default pin)
     "layers": {"features.0": {"weight": 4}, "layer3.*": {"weight": 3, "act": 4}}}

A layer value may also be a bare integer, meaning weight bits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from lowbit.errors import BitwidthError, LowbitError, PlanError, did_you_mean
from lowbit.io import atomic_write_text
from lowbit.quant.bits import FLOAT_BITS, check_bits

PIN_BITS = 8  # the first/last pin's default bits


def pinned_layers(names: Sequence[str], pin: bool = True) -> set[str]:
    """The layers the first/last pin holds: the first and the last of ``names`` (none if not ``pin``).

    The one place the pin rule lives; ``Plan`` resolution, WaveQ and the search all ask it."""
    return {names[0], names[-1]} if pin and names else set()

PLAN_FORMAT = "lowbit-plan"
PLAN_VERSION = 1
GLOB_CHARS = set("*?[")


class PlanBitsError(PlanError, BitwidthError):
    """A plan read from a dict/JSON holds invalid bits (both a PlanError and a BitwidthError)."""


@dataclass(frozen=True)
class LayerBits:
    """Resolved bits of one layer."""

    weight: int
    act: int

    @property
    def is_float(self) -> bool:
        return self.weight == FLOAT_BITS and self.act == FLOAT_BITS


@dataclass(frozen=True)
class PlanEntry:
    """One ``layers`` entry: an exact name or a glob; None leaves the field to the next rule."""

    pattern: str
    weight: int | None = None
    act: int | None = None

    @property
    def is_glob(self) -> bool:
        return any(c in GLOB_CHARS for c in self.pattern)

    def matches(self, name: str) -> bool:
        return fnmatchcase(name, self.pattern) if self.is_glob else name == self.pattern


def _bits_or_none(value: Any, where: str) -> int | None:
    return None if value is None else check_bits(value, where)


@dataclass(frozen=True)
class Plan:
    default: LayerBits = LayerBits(FLOAT_BITS, FLOAT_BITS)
    first_last: LayerBits | None = LayerBits(PIN_BITS, PIN_BITS)
    entries: tuple[PlanEntry, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_bits(self.default.weight, "default (weight)")
        check_bits(self.default.act, "default (act)")
        if self.first_last is not None:
            check_bits(self.first_last.weight, "first_last (weight)")
            check_bits(self.first_last.act, "first_last (act)")
        for entry in self.entries:
            if not isinstance(entry.pattern, str) or not entry.pattern:
                raise PlanError(f"plan layer names must be non-empty strings, got {entry.pattern!r}")
            if entry.weight is None and entry.act is None:  # could not be written to JSON
                raise PlanError(f"plan entry {entry.pattern!r} sets neither 'weight' nor 'act' bits")
            _bits_or_none(entry.weight, f"{entry.pattern} (weight)")
            _bits_or_none(entry.act, f"{entry.pattern} (act)")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def uniform(cls, weight_bits: int = FLOAT_BITS, act_bits: int = FLOAT_BITS,
                keep_first_last: bool = True, first_last_bits: int = PIN_BITS) -> Plan:
        """Every layer at the same bits, first and last pinned unless ``keep_first_last`` is False."""
        pin = LayerBits(first_last_bits, first_last_bits) if keep_first_last else None
        return cls(LayerBits(check_bits(weight_bits, "default (weight)"), check_bits(act_bits, "default (act)")), pin)

    @classmethod
    def from_layer_bits(cls, bits: Mapping[str, LayerBits | int | tuple[int, int]]) -> Plan:
        """An explicit plan: one exact entry per layer (what the searches emit); no pin."""
        entries = []
        for name, value in bits.items():
            if isinstance(value, LayerBits):
                entries.append(PlanEntry(name, value.weight, value.act))
            elif isinstance(value, tuple):
                entries.append(PlanEntry(name, value[0], value[1]))
            else:
                entries.append(PlanEntry(name, value, None))
        return cls(first_last=None, entries=tuple(entries))

    def with_entries(self, *entries: PlanEntry) -> Plan:
        return Plan(self.default, self.first_last, self.entries + tuple(entries))

    # ---- resolution ---------------------------------------------------------------------
    def resolve(self, layer_names: Sequence[str]) -> dict[str, LayerBits]:
        """Bits for every layer, in the given order. Raises PlanError for entries matching nothing."""
        names = list(layer_names)
        unmatched = [e.pattern for e in self.entries if not any(e.matches(n) for n in names)]
        if unmatched:
            hints = "".join(did_you_mean(p, names) for p in unmatched[:1])
            raise PlanError(
                f"plan entr{'y' if len(unmatched) == 1 else 'ies'} {', '.join(map(repr, unmatched))} "
                f"match{'es' if len(unmatched) == 1 else ''} no layer{hints}; layers are: {', '.join(names)}"
            )
        pinned = pinned_layers(names, self.first_last is not None)
        return {name: LayerBits(self._field(name, i, pinned, "weight"), self._field(name, i, pinned, "act"))
                for i, name in enumerate(names)}

    def _field(self, name: str, index: int, pinned: set[str], what: str) -> int:
        for entry in self.entries:
            if not entry.is_glob and entry.pattern == name and getattr(entry, what) is not None:
                return getattr(entry, what)
        if name in pinned:
            if index == 0 and what == "act":
                return FLOAT_BITS  # the network input stays float
            return getattr(self.first_last, what)
        for entry in reversed(self.entries):
            if entry.is_glob and entry.matches(name) and getattr(entry, what) is not None:
                return getattr(entry, what)
        return getattr(self.default, what)

    # ---- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def bits(b: LayerBits) -> dict[str, int]:
            return {"weight": b.weight, "act": b.act}

        layers: dict[str, dict[str, int]] = {}
        for e in self.entries:
            layers[e.pattern] = {k: v for k, v in (("weight", e.weight), ("act", e.act)) if v is not None}
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "default": bits(self.default),
                "first_last": bits(self.first_last) if self.first_last else None, "layers": layers}

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        try:
            return cls._from_dict(data)
        except BitwidthError as exc:
            raise PlanBitsError(f"invalid plan: {exc}") from None

    @classmethod
    def _from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
        if data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not a lowbit plan: 'format' must be {PLAN_FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"unsupported plan version {data.get('version')!r}; this lowbit reads version {PLAN_VERSION}")
        unknown = set(data) - {"format", "version", "default", "first_last", "layers"}
        if unknown:
            key = sorted(unknown)[0]
            raise PlanError(f"unknown plan key {key!r}"
                            f"{did_you_mean(key, ['default', 'first_last', 'layers'])}")
        default = _layer_bits(data.get("default", {"weight": FLOAT_BITS, "act": FLOAT_BITS}), "default")
        if "first_last" not in data:  # absent: the default pin (as Plan()); null: no pin
            first_last = cls.__dataclass_fields__["first_last"].default
        else:
            first_last = None if data["first_last"] is None else _layer_bits(data["first_last"], "first_last")
        layers = data.get("layers", {})
        if not isinstance(layers, dict):
            raise PlanError("plan 'layers' must be an object mapping layer names or globs to bits")
        entries = tuple(_entry(pattern, value) for pattern, value in layers.items())
        return cls(default, first_last, entries)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"plan file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read plan {path}: {exc}") from None
        except RecursionError:
            raise PlanError(f"cannot read plan {path}: JSON nested too deeply") from None
        try:
            return cls.from_dict(data)
        except LowbitError as exc:
            raise PlanError(f"{path}: {exc}") from None


def _layer_bits(value: Any, where: str) -> LayerBits:
    if not isinstance(value, dict) or set(value) - {"weight", "act"}:
        raise PlanError(f"plan {where!r} must be an object with 'weight' and/or 'act' bits, got {value!r}")
    return LayerBits(check_bits(value.get("weight", FLOAT_BITS), f"{where} (weight)"),
                     check_bits(value.get("act", FLOAT_BITS), f"{where} (act)"))


def _entry(pattern: Any, value: Any) -> PlanEntry:
    if not isinstance(pattern, str) or not pattern:
        raise PlanError(f"plan layer names must be non-empty strings, got {pattern!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return PlanEntry(pattern, check_bits(value, pattern), None)
    if not isinstance(value, dict) or not value or set(value) - {"weight", "act"}:
        raise PlanError(f"plan entry {pattern!r} must be bits or an object with 'weight' and/or 'act', got {value!r}")
    return PlanEntry(pattern, _bits_or_none(value.get("weight"), f"{pattern} (weight)"),
                     _bits_or_none(value.get("act"), f"{pattern} (act)"))


def describe(resolved: Mapping[str, LayerBits]) -> Iterable[str]:
    """Human lines 'name: wK aK' for logs."""
    for name, bits in resolved.items():
        yield f"{name}: w{bits.weight} a{bits.act}"
