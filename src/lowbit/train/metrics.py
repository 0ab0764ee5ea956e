"""Per-epoch metrics: one JSON object per line in ``metrics.jsonl``, and TensorBoard scalars
when TensorBoard is installed (``pip install lowbit[tensorboard]``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lowbit.io import atomic_write_text


class MetricsWriter:
    def __init__(self, path: str | Path | None, tensorboard_dir: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional
                self._tb = None
            else:
                self._tb = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop lines of epochs after ``epoch`` (written after the last checkpoint)."""
        if self.path is None or not self.path.exists():
            return
        # errors="replace": a line of undecodable bytes (a corrupt tail) is dropped like a torn one
        keep = [line for line in self.path.read_text(errors="replace").splitlines() if _epoch_of(line) <= epoch]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        if self._tb is not None:
            step = record.get("epoch", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _epoch_of(line: str) -> float:
    """The epoch of a metrics line; +inf for a blank, torn or malformed line (a crash mid-append), so it is dropped."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return math.inf
    if not isinstance(record, dict):
        return math.inf
    epoch = record.get("epoch", -1)
    return epoch if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else math.inf


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
