"""Read run folders (DESIGN.md's contract: result.json, config.yaml, metrics.jsonl, plan.json,
plots/) into plain data for reports, and find the run folders a user named.

A folder is a run when it holds ``result.json``. Every other file is optional: a missing one reads
as empty, so a report of a run without metrics still works. A file that exists but cannot be read
or parsed raises :class:`~lowbit.errors.DataError` naming it. Reading imports neither torch nor
the model zoo.

Which runs a path names (:func:`find_runs`):

- a run folder (or its ``result.json``): that run only; runs nested inside it (DCQ's
  ``teacher/``, a search's ``float/``) are left out unless named too;
- any other folder (e.g. ``runs/demo``): every run folder below it, nested ones included, up to
  :data:`MAX_DEPTH` levels down (hidden folders and ``plots/`` skipped), in sorted order;
- a path that does not exist but holds ``*``, ``?`` or ``[``: its glob matches, each as above.

Nothing found is a :class:`~lowbit.errors.ConfigError` naming the path. Runs named twice are
kept once. A run named directly is called by its folder name, one found in a folder of runs by its
path below that folder (``dcq/teacher``); where two runs would share a name, parent folders are
added until they differ.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowbit.errors import ConfigError, DataError

RESULT_FILE, CONFIG_FILE, METRICS_FILE, PLAN_FILE = "result.json", "config.yaml", "metrics.jsonl", "plan.json"
EVALUATIONS_FILE, PLOTS_DIR = "evaluations.jsonl", "plots"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
MAX_DEPTH = 4
_SKIPPED_DIRS = {PLOTS_DIR, "agent", "tensorboard", "__pycache__"}


@dataclass(frozen=True)
class RunData:
    """One run folder's content. ``result`` is result.json; every other field may be empty."""

    path: Path
    name: str
    result: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # a search's cache, header line dropped
    plots: list[Path] = field(default_factory=list)


def health_summary(result: dict[str, Any]) -> str | None:
    """``result.json``'s health verdict as a short text ('ok' or 'not ok: the failed checks');
    None for a run written before lowbit recorded health."""
    health = result.get("health")
    if not isinstance(health, dict) or "ok" not in health:
        return None
    return "ok" if health["ok"] else "not ok: " + ", ".join(str(c) for c in health.get("failed", []))


def is_run_folder(path: Path) -> bool:
    return (Path(path) / RESULT_FILE).is_file()


def read_run(path: str | Path, name: str | None = None) -> RunData:
    """Read the run folder at ``path``; ConfigError when it is not one, DataError when a file is corrupt."""
    path = Path(path)
    if path.is_file() and path.name == RESULT_FILE:
        path = path.parent
    if not is_run_folder(path):
        what = "does not exist" if not path.exists() else "has no result.json"
        raise ConfigError(f"{path} is not a run folder: it {what} (a run folder holds result.json, "
                          "written when a run finishes)")
    result = _read_json(path / RESULT_FILE)
    if not isinstance(result, dict):
        raise DataError(f"{path / RESULT_FILE} is not a JSON object")
    plan = _read_json(path / PLAN_FILE) if (path / PLAN_FILE).is_file() else None
    return RunData(path=path, name=name or path.name, result=result, config=_read_config(path / CONFIG_FILE),
                   metrics=_read_jsonl(path / METRICS_FILE), plan=plan if isinstance(plan, dict) else None,
                   evaluations=[r for r in _read_jsonl(path / EVALUATIONS_FILE) if "accuracy" in r],
                   plots=_plots(path / PLOTS_DIR))


def read_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Every run ``paths`` name (:func:`find_named_runs`), read."""
    return [read_run(folder, name) for folder, name in find_named_runs(paths)]


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """The run folders ``paths`` name (module docstring), in order, each once."""
    return [folder for folder, _ in find_named_runs(paths)]


def find_named_runs(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(run folder, name) for each run ``paths`` name: a run named directly is called by its folder
    name, a run found in a folder of runs by its path below that folder (``random/float``); names
    two runs would share get parent folders until they differ (:func:`run_names`)."""
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for raw in paths:
        for folder, name in _runs_named_by(Path(raw)):
            key = folder.resolve()
            if key not in seen:
                seen.add(key)
                found.append((folder, name))
    if not found:
        raise ConfigError("no run folders given")
    names = [name for _, name in found]
    clashing = [i for i, name in enumerate(names) if names.count(name) > 1]
    for i, name in zip(clashing, run_names([found[i][0] for i in clashing])):
        found[i] = (found[i][0], name)
    return found


def run_names(folders: Sequence[Path]) -> list[str]:
    """Short unique names: the folder name, plus parents where two runs would share one."""
    parts = [folder.resolve().parts for folder in folders]
    depth = [1] * len(folders)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def _runs_named_by(path: Path) -> list[tuple[Path, str]]:
    if not path.exists() and any(c in str(path) for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(str(path)))
        if not matches:
            raise ConfigError(f"{path} matches no files or folders")
        return [run for match in matches for run in _runs_named_by(match)]
    if path.is_file() and path.name == RESULT_FILE:
        return [(path.parent, path.parent.resolve().name)]
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give run folders (each holds result.json) or a folder of them")
    if not path.is_dir():
        raise ConfigError(f"{path} is a file, not a run folder (a run folder holds result.json)")
    if is_run_folder(path):
        return [(path, path.resolve().name)]
    runs = _runs_below(path, MAX_DEPTH)
    if not runs:
        raise ConfigError(f"{path} is not a run folder (no result.json) and holds none up to {MAX_DEPTH} "
                          "levels down")
    return [(run, run.relative_to(path).as_posix()) for run in runs]


def _runs_below(folder: Path, depth: int) -> list[Path]:
    """Run folders under ``folder`` (not ``folder`` itself), nested runs included, sorted."""
    if depth <= 0:
        return []
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}") from None
    runs: list[Path] = []
    for child in children:
        if child.name.startswith(".") or child.name in _SKIPPED_DIRS:
            continue
        if is_run_folder(child):
            runs.append(child)
        runs.extend(_runs_below(child, depth - 1))
    return runs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines and a torn last line (a crash mid-append) are skipped."""
    if not path.is_file():
        return []
    lines = _read_text(path).splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                continue
            raise DataError(f"{path} line {number} is not valid JSON ({exc.msg})") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML: {exc}") from None
    return config if isinstance(config, dict) else {}


def _plots(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
