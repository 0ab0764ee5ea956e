"""Plan -> accuracy, with a cache on disk: the evaluator of ReLeQ (Elthakeb et al.), METHODS.md section 5
("cache plan -> accuracy on disk in the run folder; a resumed search reuses it").

An :class:`Evaluator` maps a space's choices (one ``(w, a)`` per searched layer) to an accuracy in
[0, 1] and knows the float model's accuracy (the reward's ``acc_float``). ReLeQ, random search and
greedy descent all call the same :class:`CachedEvaluator`, which evaluates each distinct plan once.

Cache file (JSON lines; several writers may share it, see below)::

    {"format": "lowbit-search-cache", "version": 1, "space": {...}, "evaluator": {...}}   (header)
    {"key": "8/32,4/32,8/32", "choices": [[4, 32]], "accuracy": 0.97, "avg_bits": 6.67, ...}

Each new evaluation appends one line, flushed and fsync'd, so a kill loses at most the line being
written. On reload a truncated last line (no final newline) is dropped with a warning and cut from
the file; any other damage, or a header written for another space or evaluator configuration,
raises ``CheckpointError`` naming the file.

Concurrent writers (several processes, or several ``CachedEvaluator`` objects, on one file): every
change to the file (the header, cutting a truncated line, appending a record) happens under an
exclusive ``fcntl.flock`` on the file itself, and readers take a shared lock, so lines never
interleave and nobody reads half a line. The file is only ever appended to or cut in place (never
replaced by a rename, which would leave the others holding a lock on a dead file). Before a plan
is declared a miss the evaluator re-reads the file's new tail (other writers' records); the
evaluation itself runs *outside* the lock, so two writers may evaluate the same plan at once
(serializing evaluations would defeat parallel search). The append re-reads the tail under the
lock and, if another writer recorded the plan meanwhile, writes nothing and returns that record:
the first writer wins, every process sees the same accuracy for a plan and the file holds each
plan once. Readers also keep the first record of a key (files from other versions). The duplicated
evaluation still counts in ``evaluations`` (it was paid for). Without ``fcntl`` (not POSIX, e.g.
Windows) there is no lock: one writer at a time there. ``flock`` works on local filesystems
(on NFS only where the client maps it to byte-range locks, as Linux does).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from lowbit.errors import CheckpointError, ConfigError
from lowbit.search.outcome import EvalRecord
from lowbit.search.space import ChoiceLike, Choices, SearchSpace

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, one writer at a time (module docstring)
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT = "lowbit-search-cache"
CACHE_VERSION = 1


@contextmanager
def _locked(handle: IO[bytes], exclusive: bool) -> Iterator[None]:
    """``flock`` the open cache file (exclusive or shared) for the block (module docstring)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
    from the cache file when it was opened; ``external``: records other writers appended to it
    since (module docstring); ``records``: every known plan with accuracy, average bits and the
    wall time its evaluation took.
    """

    def __init__(self, inner: Evaluator, space: SearchSpace, cache_path: str | Path | None = None) -> None:
        self.inner = inner
        self.space = space
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.evaluations = 0
        self.cache_hits = 0
        self.loaded = 0
        self.external = 0
        self._records: dict[str, EvalRecord] = {}
        self._offset = 0  # bytes of the cache file read so far (whole lines only)
        self._lines = 0  # lines read so far (for error messages)
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
        """The cached record of a plan (after reading what other writers added), or None (does not
        count as a hit)."""
        key = self.space.key(choices)
        if key not in self._records:
            self.refresh()
        return self._records.get(key)

    def is_cached(self, choices: Sequence[ChoiceLike]) -> bool:
        return self.lookup(choices) is not None

    def evaluate(self, choices: Sequence[ChoiceLike]) -> EvalRecord:
        """The plan's record: from the cache, or evaluated now (and appended to the cache file)."""
        choices = self.space.normalize(choices)
        known = self.lookup(choices)  # re-reads the file's new tail before calling it a miss
        if known is not None:
            self.cache_hits += 1
            return known
        t0 = time.perf_counter()
        acc = self.inner(choices)
        return self._store(choices, acc, time.perf_counter() - t0)

    def _store(self, choices: Choices, accuracy: object, wall_s: float) -> EvalRecord:
        """Record a new evaluation of ``choices`` (normalized): count it, append it to the cache file
        (unless another writer recorded the plan first: then that record wins) and return the record."""
        key = self.space.key(choices)
        acc = check_accuracy(accuracy, f"plan {key}")
        record = EvalRecord(key, choices, acc, self.space.avg_bits(choices), self.space.weighted_bits(choices),
                            wall_s)
        if self.cache_path is not None:
            record = self._append(record)
        self._records.setdefault(key, record)
        self.evaluations += 1
        return self._records[key]

    def _header(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "space": self.space.to_dict(),
                "evaluator": self.describe()}

    def _append(self, record: EvalRecord) -> EvalRecord:
        """Append ``record`` under the exclusive lock, unless the file's new tail already holds its
        plan (another writer was first): return the record the file keeps."""
        data = record.to_dict()
        data.pop("reward")
        line = (json.dumps(data, allow_nan=False) + "\n").encode("utf-8")
        with self._handle() as handle, _locked(handle, exclusive=True):
            self._read_tail(handle, exclusive=True)
            known = self._records.get(record.key)
            if known is not None:
                return known
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self._offset += len(line)
            self._lines += 1
        return record

    def refresh(self) -> int:
        """Read the records other writers appended since the last read; returns how many were new."""
        if self.cache_path is None:
            return 0
        try:
            size = os.stat(self.cache_path).st_size
        except OSError as exc:
            raise CheckpointError(f"cannot read the search cache {self.cache_path}: {exc}") from None
        if size == self._offset:
            return 0
        before = len(self._records)
        with self._handle() as handle, _locked(handle, exclusive=False):
            self._read_tail(handle, exclusive=False)
        return len(self._records) - before

    def _handle(self) -> IO[bytes]:
        try:
            return open(self.cache_path, "a+b")  # type: ignore[arg-type]  # created if missing, never emptied
        except OSError as exc:
            raise CheckpointError(f"cannot open the search cache {self.cache_path}: {exc}") from None

    def _read_tail(self, handle: IO[bytes], exclusive: bool) -> None:
        """Read the whole lines after ``_offset`` (the handle is locked). Under the exclusive lock no
        write is in progress, so a last line without its newline was left by a killed writer: it is
        cut (with a warning) before anything is appended after it."""
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size < self._offset:
            raise CheckpointError(f"search cache {self.cache_path} shrank from {self._offset} to {size} bytes while "
                                  "in use: was it replaced or edited? Use a fresh cache file")
        handle.seek(self._offset)
        raw = handle.read(size - self._offset)
        *complete, tail = raw.split(b"\n")
        if tail and exclusive:
            warnings.warn(f"search cache {self.cache_path}: dropping a truncated last line ({len(tail)} bytes), "
                          "left by an interrupted write", stacklevel=4)
            handle.truncate(size - len(tail))
        for line in complete:
            self._offset += len(line) + 1
            self._lines += 1
            if self._lines == 1:
                self._check_header(line)
                continue
            record = self._record(self._parse(line, self._lines), self._lines)
            if record.key not in self._records:  # the first record of a plan wins
                self._records[record.key] = record
                self.external += 1

    def _check_header(self, line: bytes) -> None:
        header = self._parse(line, 1)
        expected = json.loads(json.dumps(self._header()))
        for field in ("format", "version", "space", "evaluator"):
            if header.get(field) != expected[field]:
                raise CheckpointError(
                    f"search cache {self.cache_path} was written for a different {field} "
                    f"({header.get(field)!r}, now {expected[field]!r}); use another cache file or delete this one")

    def _open(self) -> None:
        """Read the cache file under the exclusive lock (cutting a truncated last line), writing the
        header first when the file is new or empty."""
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        except OSError as exc:
            raise CheckpointError(f"cannot create the folder of the search cache {self.cache_path}: {exc}") from None
        with self._handle() as handle, _locked(handle, exclusive=True):
            self._read_tail(handle, exclusive=True)
            if self._lines == 0:
                line = (json.dumps(self._header()) + "\n").encode("utf-8")
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                self._offset, self._lines = len(line), 1
        self.loaded, self.external = self.external, 0

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
