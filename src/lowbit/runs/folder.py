"""The run folder every command writes (DESIGN.md): config.yaml, metrics.jsonl, result.json,
plan.json, checkpoints and plots. Reports and export read only this format."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import yaml

from lowbit import __version__
from lowbit.errors import CheckpointError, ConfigError
from lowbit.io import atomic_write_json, atomic_write_text
from lowbit.runs.model_io import MODEL_FILE, TRAIN_STATE_FILE

RESULT_FILE, CONFIG_FILE, METRICS_FILE, PLAN_FILE = "result.json", "config.yaml", "metrics.jsonl", "plan.json"


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / TRAIN_STATE_FILE

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    def check(self, resume: bool) -> None:
        """Raise if this folder cannot take a new run (or, resuming, has nothing to resume); changes nothing.

        Resuming needs ``checkpoint.ckpt``, or a run that was stopped before its first checkpoint
        (``config.yaml`` and no ``result.json``: see :meth:`started_without_checkpoint`). Either
        way the folder (or its nearest existing parent) must be writable.
        """
        if resume:
            if not self.checkpoint.exists() and not self.started_without_checkpoint():
                raise CheckpointError(f"--resume: {self.checkpoint} does not exist; nothing to resume")
            self._check_writable(self.path)
            return
        if self.path.is_dir():
            if any(not _is_scratch(p) for p in self.path.iterdir()):
                raise ConfigError(f"output folder {self.path} already holds a run; choose another --out, "
                                  "or pass --resume to continue it (nothing was overwritten)")
            self._check_writable(self.path)
            return
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise ConfigError(f"output folder {self.path} cannot be created: {existing} is a file, not a folder")
        if existing.exists():
            self._check_writable(existing)

    def _check_writable(self, folder: Path) -> None:
        if not os.access(folder, os.W_OK | os.X_OK):
            where = "" if folder == self.path else f" ({folder} is not writable)"
            raise ConfigError(f"output folder {self.path} is not writable{where}; choose another --out")

    def started_without_checkpoint(self) -> bool:
        """A run was started here (``config.yaml``) but stopped before its first checkpoint and never finished."""
        return (self.file(CONFIG_FILE).is_file() and not self.checkpoint.exists()
                and not self.file(RESULT_FILE).exists())

    def remove_scratch(self) -> list[Path]:
        """Delete temp files left by writes that a kill interrupted (``.NAME.*.tmp``, ``.write-test``)."""
        removed = []
        if self.path.is_dir():
            for path in self.path.iterdir():
                if _is_scratch(path) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def prepare(self, resume: bool) -> None:
        """Create the folder, refusing to overwrite a finished or started run unless resuming."""
        self.check(resume)
        if resume:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"output folder {self.path} is not writable: {exc.strerror or exc}") from None

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.file(CONFIG_FILE), yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """``config.yaml`` as a dict (plain YAML only: a ``!!python/...`` tag is refused, never run)."""
        path = self.file(CONFIG_FILE)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} has no {CONFIG_FILE}") from None
        except (OSError, yaml.YAMLError, RecursionError, ValueError, TypeError, KeyError, AttributeError) as exc:
            problem = " ".join(str(exc).split())  # ValueError and friends: bad scalars PyYAML lets through
            raise CheckpointError(f"cannot read {path}: {problem}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"cannot read {path}: expected a mapping of option: value")
        return data

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.file(RESULT_FILE), result)

    def read_result(self) -> dict[str, Any]:
        try:
            result = json.loads(self.file(RESULT_FILE).read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} has no {RESULT_FILE}") from None
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
            raise CheckpointError(f"cannot read {self.file(RESULT_FILE)}: {exc}") from None
        if not isinstance(result, dict):
            raise CheckpointError(f"cannot read {self.file(RESULT_FILE)}: expected a JSON object")
        return result


def _is_scratch(path: Path) -> bool:
    """A temp file of :func:`lowbit.io.atomic_write_bytes` or the write probe of :meth:`RunFolder.prepare`."""
    return path.name == ".write-test" or (path.name.startswith(".") and path.name.endswith(".tmp"))


def environment() -> dict[str, Any]:
    """What ran it: versions and machine, recorded in every result."""
    import torch

    return {"lowbit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
