"""``lowbit run``: an experiment config -> one command's options, checked, linked to the float run
it starts from, and run (the dry run is :mod:`lowbit.runs.config_dry_run`).

An experiment config (``configs/<method>/*.yaml``) is a mapping with four top-level keys:

    command: train | waveq | dcq | search    # which options dataclass ``options`` fills, which run_* runs it
    requires: ../float/resnet20-cifar10.yaml # optional: the float run this experiment starts from
    options: {...}                            # keys exactly the dataclass's fields (dashes allowed)
    paper: {...}                              # the abstract's claim and number; never read as options

Dependencies. An experiment that starts from float weights names the float run's folder in its
start option (``init`` for train/waveq/search, ``teacher`` for dcq) *and* names the config that
writes that folder in ``requires`` (a path relative to the config file). The two must agree:
the required config is a float ``train`` config whose ``out`` is that folder, on the same model
and dataset. ``lowbit run`` does not run the dependency for you; it says which command to run
first. Overriding the start option (``--set init=DIR``) drops the requirement; overriding the
dataset while still pointing at the float run of another dataset is an error that says what to
run. A search config can instead train its own float model (``init: null`` and ``float_epochs``),
which is what the ReLeQ configs do so the validation split the agent sees stays held out.

DESIGN.md: only the CLI reads config files. So :mod:`lowbit.cli.run_cmd` reads the YAML and
merges options; this module works on parsed mappings and built options: structure checks, typed
``--set`` overrides, dependency links and the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lowbit.errors import CheckpointError, ConfigError, did_you_mean, unknown_name
from lowbit.io import atomic_write_text
from lowbit.quant.registry import NO_QUANTIZER
from lowbit.runs.dcq_run import DcqOptions, run_dcq
from lowbit.runs.model_io import resolve_model_file
from lowbit.runs.option_values import parse_override, parse_overrides
from lowbit.runs.search_run import SearchOptions, run_search
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.runs.waveq_run import WaveQOptions, run_waveq
from lowbit.train import Reporter

TOP_KEYS = ("command", "requires", "options", "paper")
EXPERIMENT_FILE = "experiment.yaml"  # written into the run folder: config, overrides, the paper's claim


@dataclass(frozen=True)
class Command:
    """One runnable command: its options dataclass, its run function and the option that names
    the float run it starts from."""

    name: str
    options: type
    run: Callable[..., dict[str, Any]]
    start_field: str


COMMANDS: dict[str, Command] = {
    "train": Command("train", TrainOptions, run_train, "init"),
    "waveq": Command("waveq", WaveQOptions, run_waveq, "init"),
    "dcq": Command("dcq", DcqOptions, run_dcq, "teacher"),
    "search": Command("search", SearchOptions, run_search, "init"),
}


@dataclass
class Experiment:
    """A loaded experiment: validated options, the paper block, and the float run it starts from."""

    command: str
    options: Any
    source: str = "<config>"
    paper: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    requires: Experiment | None = None  # linked dependency (loaded without overrides)
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> Command:
        return COMMANDS[self.command]

    @property
    def start(self) -> str | None:
        """The float run (folder or model file) this experiment starts from, if any."""
        return getattr(self.options, self.spec.start_field)

    def out(self) -> str:
        return str(self.options.out or self.options.default_out())


# ---- structure and overrides ------------------------------------------------------------------

def check_mapping(data: Mapping[str, Any], source: str) -> tuple[str, dict[str, Any], dict[str, Any], str | None]:
    """(command, options, paper, requires) of a parsed config, checking the top-level structure."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: an experiment config is a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{source}: unknown top-level key {key!r}{did_you_mean(str(key), TOP_KEYS)}; "
                              f"an experiment config has {', '.join(TOP_KEYS)} (options go under 'options:')")
    command = data.get("command")
    if command is None:
        raise ConfigError(f"{source}: missing 'command' ({' | '.join(COMMANDS)})")
    if command not in COMMANDS:
        raise ConfigError(f"{source}: {unknown_name('command', str(command), COMMANDS)}")
    options = data.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{source}: 'options' must be a mapping of {command} option: value")
    paper = data.get("paper") or {}
    if not isinstance(paper, Mapping):
        raise ConfigError(f"{source}: 'paper' must be a mapping (claim, reported, ...)")
    requires = data.get("requires")
    if requires is not None and (not isinstance(requires, str) or not requires.strip()):
        raise ConfigError(f"{source}: 'requires' must name one config file (relative to this one)")
    return str(command), dict(options), dict(paper), requires


def resolve_out(options: Any) -> None:
    """Fill ``{option}`` placeholders in ``options.out`` from the options themselves, so that
    ``out: runs/sinreq/x-w{wbits}-s{seed}`` follows ``--set wbits=3 seed=1``."""
    out = options.out
    if out is None or "{" not in str(out):
        return
    values = dataclasses.asdict(options)
    try:
        options.out = str(out).format(**values)
    except KeyError as exc:
        name = str(exc.args[0])
        raise ConfigError(f"out {out!r}: unknown placeholder {{{name}}}{did_you_mean(name, values)}; "
                          "placeholders name options, e.g. {wbits} or {seed}") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise ConfigError(f"out {out!r}: bad placeholder ({exc}); write them like {{wbits}}") from None


# ---- dependencies -----------------------------------------------------------------------------

def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.normpath(str(a)) == os.path.normpath(str(b))


def link_dependency(exp: Experiment, dep: Experiment) -> None:
    """Attach ``dep`` (loaded without overrides) as the float run ``exp`` starts from, or note why
    it no longer applies; raise ConfigError when the two do not fit together."""
    if dep.command != "train" or dep.options.quantizer != NO_QUANTIZER:
        raise ConfigError(f"{exp.source}: requires {dep.source}, which is not a float 'train' config "
                          f"(command {dep.command}, quantizer {getattr(dep.options, 'quantizer', '?')})")
    if not dep.options.out:
        raise ConfigError(f"{exp.source}: required config {dep.source} must name its output folder ('out')")
    name, start = exp.spec.start_field, exp.start
    if start is None or not _same_path(start, dep.options.out):
        exp.notes.append(f"{name} is {start!r}, not {dep.options.out} (written by {dep.source}): "
                         "that requirement does not apply")
        return
    model = exp.options.model if exp.command != "dcq" else dep.options.model
    wanted = {"model": model, "dataset": exp.options.dataset,
              "width_mult": getattr(exp.options, "width_mult", 1.0) if exp.command != "dcq" else dep.options.width_mult}
    have = {"model": dep.options.model, "dataset": dep.options.dataset, "width_mult": dep.options.width_mult}
    wrong = [k for k in wanted if wanted[k] != have[k]]
    if wrong:
        sets = " ".join(f"{k}={wanted[k]}" for k in wrong)
        raise ConfigError(
            f"{exp.source}: {name} {start} is the output of {dep.source}, which trains "
            f"{', '.join(f'{k} {have[k]}' for k in wrong)}, but this run has "
            f"{', '.join(f'{k} {wanted[k]}' for k in wrong)}; run `lowbit run {dep.source} --set {sets} "
            f"out=DIR` (with the same data_dir) and pass --set {name}=DIR here")
    exp.requires = dep


def folder_present(path: str | None) -> bool:
    if path is None:
        return False
    try:
        resolve_model_file(path)
    except CheckpointError:
        return False
    return True


# ---- the run ----------------------------------------------------------------------------------

def validate_options(options: Any) -> str | None:
    """``options.validate()``; a GPU config on a machine without one is validated as if for the
    CPU (everything else still checked), and the returned note says so (None otherwise)."""
    device = str(options.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        dataclasses.replace(options, device="cpu").validate()
        return f"device {device}: no GPU here, so the options were checked as if for the CPU"
    options.validate()
    return None


def check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("this config runs on a GPU (device: cuda) and none is available here; "
                          "--set device=cpu runs it on the CPU (slowly), or --dry-run checks it without one")


def run_experiment(exp: Experiment, reporter: Reporter | None = None, command: str | None = None) -> dict[str, Any]:
    """Run the experiment's command; its run folder also gets ``experiment.yaml`` (config file,
    overrides and the paper's claim), so a result names the claim it tests."""
    reporter = reporter or Reporter()
    check_device(exp.options.device)
    exp.options.validate()
    if exp.requires is not None and not folder_present(exp.start):
        raise ConfigError(f"{exp.source} starts from {exp.start}, the float run written by {exp.requires.source}, "
                          f"which is not there yet: run `lowbit run {exp.requires.source}` first")
    for note in exp.notes:
        reporter.log(note)
    result = exp.spec.run(exp.options, reporter=reporter, command=command)
    folder = Path(exp.out())
    if folder.is_dir():
        atomic_write_text(folder / EXPERIMENT_FILE, experiment_record(exp))
    return result


def experiment_record(exp: Experiment) -> str:
    """``experiment.yaml``: which config ran, with which overrides, and what the paper claims."""
    record = {"config": exp.source, "command": exp.command, "overrides": exp.overrides,
              "requires": exp.requires.source if exp.requires is not None else None, "paper": exp.paper}
    return yaml.safe_dump(record, sort_keys=False, allow_unicode=True)


def experiment_paths(root: str | os.PathLike) -> list[Path]:
    """Every ``*.yaml`` under ``root`` (sorted)."""
    return sorted(Path(root).rglob("*.yaml"))


__all__ = ["COMMANDS", "Command", "EXPERIMENT_FILE", "Experiment",
           "check_device", "check_mapping", "experiment_paths", "link_dependency",
           "parse_override", "parse_overrides", "resolve_out", "run_experiment", "validate_options"]
