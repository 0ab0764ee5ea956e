"""Options every run command shares, and each option's one declaration.

An option is a dataclass field declared with :func:`option`: its default, its help text, its
lowest integer value, its fixed choices and its metavar sit in one place. ``validate`` checks
them generically (:func:`check_fields`), the command line is generated from them
(:mod:`lowbit.cli.flags`), and YAML and ``--set`` values are typed by the same annotations
(:mod:`lowbit.runs.option_values`). :class:`RunOptions` holds the fields every command has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lowbit.data import list_datasets
from lowbit.errors import ConfigError, unknown_name
from lowbit.executors import EXECUTORS, RAY_EXTRA, check_executor
from lowbit.models import list_models, model_info
from lowbit.plan import Plan
from lowbit.quant.bits import FLOAT_BITS, check_bits
from lowbit.quant.registry import NO_QUANTIZER, SCALE_CHOICES, list_quantizers

DEVICES = ("cpu", "cuda")


def option(default: Any, help: str = "", *, low: int | None = None,
           choices: Sequence[str] | Callable[[], Sequence[str]] | None = None, metavar: str | None = None,
           flag: str | None = None, default_text: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag.

    ``low``: an integer option's lowest value (checked by :func:`check_fields`). ``choices``: a
    tuple is checked by :func:`check_fields`; a callable (a registry's names) by the command's
    own validation; both are listed in the flag's help. ``flag``: the flag's
    name when it is not ``--field-name`` (a bool that defaults to True gets ``--no-NAME``).
    ``default_text``: the help's default when the field's is None ("the quantizer's recipe").
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "low": low, "choices": choices, "metavar": metavar, "flag": flag, "default_text": default_text})


def choices_of(f: dataclasses.Field) -> Sequence[str] | None:
    found = f.metadata.get("choices")
    return found() if callable(found) else found


def check_fields(options: Any) -> None:
    """Every ``low`` and fixed ``choices`` declared by :func:`option`."""
    for f in dataclasses.fields(options):
        value, low, fixed = getattr(options, f.name), f.metadata.get("low"), f.metadata.get("choices")
        if value is None:
            continue
        if low is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{f.name} must be an integer >= {low}, got {value!r}")
        if isinstance(fixed, tuple) and value not in fixed:
            raise unknown_name(f.name.replace("_", " "), str(value), fixed)


def quantizer_names() -> list[str]:
    return [q for q in list_quantizers() if q != NO_QUANTIZER]


@dataclass
class RunOptions:
    """What every run command takes: model, data, quantizer, batch, seed, machine, folder, strictness."""

    model: str = option("lenet5", "zoo model", choices=list_models)
    dataset: str = option("digits", "dataset", choices=list_datasets)
    data_dir: str | None = option(None, "folder with the dataset's files (file-based datasets)")
    quantizer: str = option("dorefa", "quantizer", choices=quantizer_names)
    scale: str = option("auto", "weight output scale", choices=SCALE_CHOICES)
    batch_size: int = option(64, "batch size (the global batch under torchrun)", low=1)
    seed: int = option(0, "random seed", low=0)
    threads: int | None = option(None, "CPU threads for torch; use 1 when other jobs share the cores", low=1,
                                 default_text="torch's choice")
    device: str = option("cpu", "device", choices=DEVICES)
    out: str | None = option(None, "run folder to write", default_text="runs/MODEL-DATASET-METHOD-sSEED")
    strict: bool = option(False, "exit with code 3 when the run fails its health checks (not learning, at chance, "
                          "a layer on one level); the run folder is written either way")
    tuning_fraction: float = option(0.0, "score the run on this share of the training split, held out with a fixed "
                                    "seed, instead of the test split, which is then never loaded (the tuning "
                                    "protocol of lowbit compare)")

    def validate(self) -> None:
        """Common checks (names, integer ranges, fixed choices); commands add their own after these."""
        if self.model is not None:
            model_info(self.model)  # unknown names fail here, before any folder is created
        if self.dataset not in list_datasets():
            raise unknown_name("dataset", self.dataset, list_datasets())
        check_fields(self)
        if not 0.0 <= self.tuning_fraction < 1.0:
            raise ConfigError(f"tuning_fraction must be in [0, 1), got {self.tuning_fraction}")
        if self.out is not None and not str(self.out).strip():
            raise ConfigError("out must name a folder, got an empty string")

    def method_name(self) -> str:
        raise NotImplementedError

    def default_out(self) -> str:
        return f"runs/{self.model}-{self.dataset}-{self.method_name()}-s{self.seed}"


@dataclass
class ExecutorOptions(RunOptions):
    """The options of a command whose independent tasks (the search's plan evaluations, DCQ's
    sections) can run on a Ray cluster instead of local processes (``lowbit.executors``)."""

    executor: str = option("local", "where the --workers tasks run: local (processes on this machine) or ray (tasks "
                           f"on a Ray cluster, the same results; {RAY_EXTRA})", choices=EXECUTORS)
    ray_address: str | None = option(None, "with --executor ray: the cluster to join, HOST:PORT of its head (ray "
                                     "start --head) or auto (the cluster started on this machine)", metavar="ADDR",
                                     default_text="a Ray instance of --workers CPUs on this machine")

    def validate(self) -> None:
        super().validate()
        check_executor(self.executor, self.ray_address)


def check_plan_flags(plan: str | None, wbits: int | None, abits: int | None) -> None:
    """``--plan`` or ``--wbits``/``--abits``, each a bitwidth the library knows."""
    if plan is not None and (wbits is not None or abits is not None):
        raise ConfigError("give either --plan or --wbits/--abits, not both")
    for flag, bits in (("--wbits", wbits), ("--abits", abits)):
        if bits is not None:
            check_bits(bits, None, what=f"{flag} value")


def plan_from(plan: str | None, wbits: int | None, abits: int | None, default_wbits: int = 4) -> Plan:
    """The plan file, else uniform ``wbits`` (default ``default_wbits``) and ``abits`` (default float)."""
    if plan is not None:
        return Plan.load(plan)
    return Plan.uniform(wbits if wbits is not None else default_wbits, abits if abits is not None else FLOAT_BITS)
