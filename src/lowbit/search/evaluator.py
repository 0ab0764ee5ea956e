"""Plan -> accuracy, with a cache on disk: the evaluator of ReLeQ (Elthakeb et al.), METHODS.md section 5
("cache plan -> accuracy on disk in the run folder; a resumed search reuses it").

An :class:`Evaluator` maps a space's choices (one ``(w, a)`` per searched layer) to an accuracy in
[0, 1] and knows the float model's accuracy (the reward's ``acc_float``). ReLeQ, random search and
greedy descent all call the same :class:`CachedEvaluator`, which evaluates each distinct plan once.

Cache file (JSON lines, one writer at a time)::

    {"format": "lowbit-search-cache", "version": 1, "space": {...}, "evaluator": {...}}   (header)
    {"key": "8/32,4/32,8/32", "choices": [[4, 32]], "accuracy": 0.97, "avg_bits": 6.67, ...}

The header is written atomically; each new evaluation appends one line, flushed and fsync'd, so a
kill loses at most the line being written. On reload a truncated last line (no final newline) is
dropped with a warning and cut from the file; any other damage, or a header written for another
space or evaluator configuration, raises ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lowbit.errors import CheckpointError, ConfigError
from lowbit.io import atomic_write_text
from lowbit.search.outcome import EvalRecord
from lowbit.search.space import ChoiceLike, Choices, SearchSpace

CACHE_FORMAT = "lowbit-search-cache"
CACHE_VERSION = 1


@runtime_checkable
class Evaluator(Protocol):
    """``choices -> accuracy`` (a fraction in [0, 1]); ``float_accuracy()`` is the float reference."""

    def __call__(self, choices: Choices) -> float: ...

    def float_accuracy(self) -> float: ...


def check_accuracy(value: object, where: str) -> float:
    """``value`` as a float in [0, 1], or ``ConfigError`` naming ``where``."""
    try:
        acc = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: the evaluator returned {value!r}, not an accuracy") from None
    if not math.isfinite(acc) or not 0.0 <= acc <= 1.0:
        raise ConfigError(f"{where}: the evaluator returned accuracy {acc}, expected a fraction in [0, 1]")
    return acc


def describe_evaluator(evaluator: object) -> dict[str, Any]:
    """The evaluator's ``describe()`` (its configuration, JSON-able), or just its class name."""
    describe = getattr(evaluator, "describe", None)
    data = describe() if callable(describe) else {"class": type(evaluator).__name__}
    return json.loads(json.dumps(data))


class CachedEvaluator:
    """Evaluate each distinct plan once; remember it in memory and (with ``cache_path``) on disk.

    ``evaluations``: new evaluations made by this object (calls of ``inner``); ``cache_hits``:
    requests served from the cache (including plans loaded from disk); ``loaded``: records read
    from the cache file; ``records``: every known plan with accuracy, average bits and the wall
    time its evaluation took.
    """

    def __init__(self, inner: Evaluator, space: SearchSpace, cache_path: str | Path | None = None) -> None:
        self.inner = inner
        self.space = space
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.evaluations = 0
        self.cache_hits = 0
        self.loaded = 0
        self._records: dict[str, EvalRecord] = {}
        self._float_accuracy: float | None = None
        if self.cache_path is not None:
            self._open()

    # ---- the evaluator interface ------------------------------------------------------------
    def __call__(self, choices: Sequence[ChoiceLike]) -> float:
        return self.evaluate(choices).accuracy

    def float_accuracy(self) -> float:
        if self._float_accuracy is None:
            acc = check_accuracy(self.inner.float_accuracy(), "float model")
            if acc <= 0:
                raise ConfigError("the float model's accuracy is 0: there is no reference for the reward")
            self._float_accuracy = acc
        return self._float_accuracy

    def describe(self) -> dict[str, Any]:
        return describe_evaluator(self.inner)

    # ---- cache ------------------------------------------------------------------------------
    @property
    def records(self) -> list[EvalRecord]:
        return list(self._records.values())

    def lookup(self, choices: Sequence[ChoiceLike]) -> EvalRecord | None:
        """The cached record of a plan, or None (does not count as a hit)."""
        return self._records.get(self.space.key(choices))

    def is_cached(self, choices: Sequence[ChoiceLike]) -> bool:
        return self.lookup(choices) is not None

    def evaluate(self, choices: Sequence[ChoiceLike]) -> EvalRecord:
        """The plan's record: from the cache, or evaluated now (and appended to the cache file)."""
        choices = self.space.normalize(choices)
        key = self.space.key(choices)
        known = self._records.get(key)
        if known is not None:
            self.cache_hits += 1
            return known
        t0 = time.perf_counter()
        acc = check_accuracy(self.inner(choices), f"plan {key}")
        record = EvalRecord(key, choices, acc, self.space.avg_bits(choices), self.space.weighted_bits(choices),
                            time.perf_counter() - t0)
        if self.cache_path is not None:
            self._append(record)
        self._records[key] = record
        self.evaluations += 1
        return record

    def _header(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "space": self.space.to_dict(),
                "evaluator": self.describe()}

    def _append(self, record: EvalRecord) -> None:
        data = record.to_dict()
        data.pop("reward")
        line = json.dumps(data, allow_nan=False) + "\n"
        with open(self.cache_path, "a", encoding="utf-8") as handle:  # type: ignore[arg-type]
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _open(self) -> None:
        path = self.cache_path
        assert path is not None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise CheckpointError(f"cannot read the search cache {path}: {exc}") from None
        *complete, tail = raw.split(b"\n")
        if tail:
            warnings.warn(f"search cache {path}: dropping a truncated last line ({len(tail)} bytes), "
                          "left by an interrupted write", stacklevel=3)
            os.truncate(path, len(raw) - len(tail))
        if not complete:
            atomic_write_text(path, json.dumps(self._header()) + "\n")
            return
        header = self._parse(complete[0], 1)
        expected = json.loads(json.dumps(self._header()))
        for field in ("format", "version", "space", "evaluator"):
            if header.get(field) != expected[field]:
                raise CheckpointError(
                    f"search cache {path} was written for a different {field} "
                    f"({header.get(field)!r}, now {expected[field]!r}); use another cache file or delete this one")
        for lineno, line in enumerate(complete[1:], start=2):
            record = self._record(self._parse(line, lineno), lineno)
            if record.key not in self._records:
                self._records[record.key] = record
                self.loaded += 1

    def _parse(self, line: bytes, lineno: int) -> dict[str, Any]:
        try:
            data = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(f"search cache {self.cache_path} is corrupt at line {lineno}: {exc}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"search cache {self.cache_path} is corrupt at line {lineno}: not a JSON object")
        return data

    def _record(self, data: dict[str, Any], lineno: int) -> EvalRecord:
        where = f"search cache {self.cache_path} line {lineno}"
        try:
            record = EvalRecord.from_dict(data)
            choices = self.space.normalize(record.choices)
            key = self.space.key(choices)
            check_accuracy(record.accuracy, where)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: not a valid record ({exc})") from None
        if key != record.key:
            raise CheckpointError(f"{where}: key {record.key!r} does not match its choices ({key!r})")
        return record
