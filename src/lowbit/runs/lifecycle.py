"""The life of a run, shared by ``lowbit train``, ``waveq``, ``dcq`` and ``search``.

:func:`start_run` does what every command does before its method: the global batch checked
against the processes, ``--init`` found, the run folder checked (nothing is created while a user
error can still be raised), the clock started, threads and seed set, the data loaded and the zoo
model fitted to it. The returned :class:`StartedRun` then
writes ``config.yaml`` (rank 0), hands out the loaders, assembles the ``result.json`` fields every
run has, and ends the run (``result.json``, summary line, health verdict, ``--strict``). :func:`processes` joins and
leaves a torchrun process group around a command that trains with DDP.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.costs import model_costs
from lowbit.data import ArrayLoader, DatasetSplits
from lowbit.health import Health
from lowbit.nn import layer_bits
from lowbit.quant.registry import QuantizerSpec
from lowbit.errors import ConfigError
from lowbit.runs.build import ModelArgs, fit_model_to_data, load_model_and_data
from lowbit.runs.folder import RunFolder, environment
from lowbit.runs.model_io import MODEL_FILE, load_float_weights, resolve_model_file
from lowbit.train import QUIET, Reporter
from lowbit.train.distributed import DistInfo, ShardedLoader, barrier, cleanup, init_distributed

EVAL_BATCH = 512  # evaluation batch of every run's test and validation loaders
SINGLE = DistInfo()  # one process, rank 0


@contextmanager
def processes(device: str) -> Iterator[DistInfo]:
    """This process's place in a torchrun group (joined here, left at the end), or a single process."""
    info = init_distributed(device)
    try:
        yield info
    finally:
        cleanup(info)


@dataclass
class StartedRun:
    """A run whose folder is checked and whose data and model are built; see the module docstring."""

    options: Any
    folder: RunFolder
    reporter: Reporter
    command: str | None
    start: float
    args: ModelArgs
    data: DatasetSplits
    model: nn.Module
    fp_accuracy: float | None
    fit_note: str  # how the model was fitted to the data (built for its size, or the data resized)
    info: DistInfo = SINGLE

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def write_config(self, method: str, *, resume: bool = False, **extra: Any) -> None:
        """Create the folder (rank 0, after every rank checked it) and write ``config.yaml``."""
        barrier()
        if self.is_main:
            if not resume:  # a resumed folder was checked by start_run
                self.folder.prepare(False)
            self.folder.write_config({**asdict(self.options), "out": str(self.folder.path), "method": method,
                                      **extra})

    def eval_loader(self, split: str = "test") -> ArrayLoader | None:
        """The ``test`` or ``val`` split in order at the evaluation batch (None: no such split)."""
        rows = getattr(self.data, split)
        return (ArrayLoader(rows, batch_size=EVAL_BATCH, shuffle=False, mean=self.data.mean, std=self.data.std)
                if rows is not None else None)

    def train_loader(self) -> Any:
        """The shuffled training loader of the global batch (this rank's share under DDP)."""
        loader = ArrayLoader(self.data.train, batch_size=self.options.batch_size, shuffle=True,
                             seed=self.options.seed, mean=self.data.mean, std=self.data.std)
        return ShardedLoader(loader, self.info.rank, self.info.world_size) if self.info.world_size > 1 else loader

    def result(self, model: nn.Module, method: str, spec: QuantizerSpec | None, accuracy: float,
               **fields: Any) -> dict[str, Any]:
        """The fields every ``result.json`` has (DESIGN.md, "Run folder"): the command as typed, wall time,
        versions, model and data, accuracy (``fp_accuracy`` defaults to the start's), the plan's costs
        read off ``model`` as it is quantized now; then ``fields``."""
        env, costs, bits = environment(), model_costs(model), layer_bits(model)
        result = {
            "command": self.command or " ".join(["lowbit", *sys.argv[1:]]), "wall_s": time.perf_counter() - self.start,
            "version": env["lowbit"], "environment": env,
            "model": self.args.name, "model_args": self.args.to_dict(), "dataset": self.data.name,
            "data": self.data.description, "method": method, "quantizer": spec.to_dict() if spec else None,
            "seed": self.options.seed, "accuracy": accuracy, "fp_accuracy": self.fp_accuracy,
            "scored_on": "tuning hold-out of train" if self.options.tuning_fraction else "test",
            "weight_bits": {n: b.weight for n, b in bits.items()}, "act_bits": {n: b.act for n, b in bits.items()},
            "avg_bits": costs.avg_bits, "weighted_bits": costs.weighted_bits, "size_bytes": costs.size_bytes,
            "float_size_bytes": costs.float_size_bytes, "compression": costs.compression, **fields,
        }
        if self.info.world_size > 1:
            result["world_size"] = self.info.world_size
        return result

    def finish(self, result: dict[str, Any], health: Health, what: str, summary: str) -> dict[str, Any]:
        """Rank 0 adds ``health`` and writes ``result.json``, logs ``summary -> folder``, says the health
        verdict and turns a failed check under ``--strict`` into exit code 3 (``lowbit.health``)."""
        if not self.is_main:
            return result
        result["health"] = health.to_dict()
        self.folder.write_result(result)
        self.reporter.log(f"{summary}  -> {self.folder.path}")
        health.report(self.reporter, what)
        health.enforce(self.options.strict, f"{what} in {self.folder.path}")
        return result


def check_global_batch(batch_size: int, world_size: int) -> None:
    """--batch-size is the global batch: each of ``world_size`` processes takes an equal share."""
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                          f"{world_size} processes (each takes batch_size / {world_size})")


def init_accuracy(init: str) -> float | None:
    """The float reference accuracy when --init points at a float run folder."""
    path = Path(init)
    folder = RunFolder(path if path.is_dir() or path.name != MODEL_FILE else path.parent)
    if not folder.file("result.json").exists():
        return None
    result = folder.read_result()
    return result.get("accuracy") if result.get("method") == "float" else result.get("fp_accuracy")


def start_run(options: Any, reporter: Reporter | None, command: str | None, *, info: DistInfo = SINGLE,
              resume: bool = False, check: Callable[[RunFolder], None] | None = None, model: str | None = None,
              init: str | None = None, val_fraction: float = 0.0, width_mult: float = 1.0,
              data: DatasetSplits | None = None, dry_run: bool = False) -> StartedRun:
    """Check, then build: see the module docstring. ``model`` defaults to the options' own;
    ``check`` replaces the folder check (``RunFolder.check(resume)``). A dry run (``lowbit run
    --dry-run``) checks no folder and may bring its own ``data`` (a stand-in of the right shape)."""
    reporter = (reporter or Reporter()) if info.is_main else QUIET
    check_global_batch(options.batch_size, info.world_size)
    folder = RunFolder(options.out or options.default_out())
    if not dry_run:
        if init is not None:
            resolve_model_file(init)  # fail before any work if it is missing
        (check or (lambda f: f.check(resume)))(folder)
    start = time.perf_counter()
    if options.threads is not None and not dry_run:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    name = model or options.model
    if data is None:
        args, data, note = load_model_and_data(name, options.dataset, options.data_dir, seed=options.seed,
                                               val_fraction=val_fraction, width_mult=width_mult,
                                               tuning_fraction=options.tuning_fraction)
    else:
        args, data, note = fit_model_to_data(name, data, width_mult)
    reporter.log(f"[bold]{name}[/] on [bold]{data.name}[/]: {data.description}")
    reporter.log(note)
    net, fp_accuracy = args.build(), None
    if init is not None:
        load_float_weights(net, init)
        fp_accuracy = init_accuracy(init)
    return StartedRun(options, folder, reporter, command, start, args, data, net, fp_accuracy, note, info)
