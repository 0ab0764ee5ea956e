"""``fit`` and ``evaluate``: one training loop for every method.

The loop knows nothing about quantization: methods plug in through ``LossTerm`` (a callable
``model -> scalar`` with a weight schedule over training progress) and epoch callbacks that add
fields to the epoch's metrics record. With a ``checkpoint_path`` the loop writes a checkpoint at
the end of every epoch (model, optimizer, scheduler, RNG state, history); ``resume=True``
continues from it and ends with the same weights as an uninterrupted run on CPU, because the
data order of an epoch depends only on (seed, epoch) and the RNG state is restored.

SIGINT (Ctrl-C) and SIGTERM during the epoch loop finish the current optimizer step, write a
checkpoint of that exact state (``partial``: the epoch in progress, the steps done in it and its
running sums) and raise :class:`~lowbit.errors.TrainingInterrupted`; resuming replays the
epoch's batch order, skips the batches already trained on and ends with the same weights as an
uninterrupted run (see :mod:`lowbit.train.interrupt`). Without a ``checkpoint_path`` the step is
finished and the error raised, with nothing to resume from.

Distributed (a ``torch.distributed`` group of more than one process is initialized, e.g. under
``torchrun``; see :mod:`lowbit.train.distributed`): every rank calls ``fit`` with its shard of the
data (:class:`~lowbit.train.distributed.ShardedLoader`). The model, with the loss terms, is
wrapped in DistributedDataParallel, which averages the gradients; each rank's cross-entropy is
its sum times world size / global batch, so a step equals a single-process step on the global
batch (even with unequal shares) up to float summation order. Loss terms, step and epoch
callbacks always get the underlying model. A fresh run first shows the model the first global
batch once (no gradients, batch-norm statistics and RNG put back) so data-dependent state (LSQ's
activation step) matches a single process and every rank; DDP then broadcasts rank 0's
parameters and buffers, and re-broadcasts buffers (batch-norm running statistics) at every
forward. Batch-norm normalises with each rank's own batch (no SyncBatchNorm). Epoch metrics are
reduced over ranks; rank 0 alone writes metrics and checkpoints while the others wait at a
barrier; every rank loads the checkpoint on resume and evaluates the whole ``eval_loader``. The
ranks agree after every step on whether a signal arrived, so all stop at the same step.

The pieces, each in its own module: the optimizer step with AMP, warm-up, clipping and the finite
check (:mod:`~lowbit.train.step`), one process or a DDP group (:mod:`~lowbit.train.replicas`), the
checkpoint and resume (:mod:`~lowbit.train.state`), the epoch's sums and metrics record
(:mod:`~lowbit.train.tally`) and the signal guard (:mod:`~lowbit.train.interrupt`). This module
runs the epochs with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.train.config import TrainConfig
from lowbit.train.interrupt import InterruptGuard, interrupted
from lowbit.train.metrics import MetricsWriter
from lowbit.train.progress import QUIET, Reporter
from lowbit.train.replicas import Replicas, replicas
from lowbit.train.state import TrainState
from lowbit.train.step import Stepper
from lowbit.train.tally import EpochTally, epoch_line
from lowbit.train.terms import LossTerm

__all__ = ["Batches", "EpochCallback", "FitResult", "LossTerm", "StepCallback", "evaluate", "fit"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
EpochCallback = Callable[[int, nn.Module], dict[str, Any]]
StepCallback = Callable[[nn.Module, float], None]  # (model, progress after the step) -> None


class _Objective(nn.Module):
    """The model's logits and every loss term's value in one forward, so that DDP sees each
    parameter a term reads (WaveQ's β and α appear only in its terms)."""

    def __init__(self, model: nn.Module, terms: Sequence[LossTerm], device_type: str, use_amp: bool) -> None:
        super().__init__()
        self.model, self.terms, self.device_type, self.use_amp = model, list(terms), device_type, use_amp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast(self.device_type, enabled=self.use_amp):
            logits = self.model(x)
        return logits, [term.fn(self.model) for term in self.terms]


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int | None = None  # the last complete epoch of the checkpoint (-1: none)
    resumed_at_step: int = 0  # steps of the next epoch already done in the checkpoint (mid-epoch)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Batches, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (a fraction) of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return (loss_sum / total, correct / total) if total else (float("nan"), float("nan"))


def fit(model: nn.Module, train_loader: Sequence, config: TrainConfig, *,
        eval_loader: Batches | None = None, eval_name: str = "test",
        loss_terms: Sequence[LossTerm] = (), callbacks: Sequence[EpochCallback] = (),
        step_callbacks: Sequence[StepCallback] = (), no_decay: Callable[[str], bool] = lambda name: False,
        checkpoint_path: str | Path | None = None, checkpoint_extra: dict[str, Any] | None = None,
        resume: bool = False, metrics: MetricsWriter | None = None,
        reporter: Reporter = QUIET, watch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs on ``train_loader`` (len() = batches/epoch).

    ``step_callbacks`` run after every optimizer step with the progress reached, (step + 1) /
    total steps (projections and phase switches of a method, e.g. WaveQ's bit clamp and freeze).
    ``watch`` sees each epoch's finished metrics record (a health monitor that warns early).
    """
    device = torch.device(config.device)
    model.to(device)
    use_amp = config.amp and device.type == "cuda"
    steps_per_epoch = max(len(train_loader), 1)
    stepper = Stepper(model, config, no_decay=no_decay, use_amp=use_amp,
                      warmup_steps=round(config.warmup_epochs * steps_per_epoch))
    group = replicas()
    run = _FitRun(model=model, loader=train_loader, config=config, device=device, stepper=stepper, group=group,
                  state=TrainState(checkpoint_path, model, stepper, checkpoint_extra, group.main),
                  terms=list(loss_terms), callbacks=list(callbacks), step_callbacks=list(step_callbacks),
                  eval_loader=eval_loader, eval_name=eval_name, metrics=metrics,
                  reporter=reporter if group.main else QUIET, watch=watch)
    start_epoch, partial = run.resume() if resume else (0, None)
    run.step_model = group.wrap(_Objective(model, run.terms, device.type, use_amp), model, train_loader,
                                fresh=not resume and config.epochs > 0, device=device, use_amp=use_amp)
    with InterruptGuard() as run.guard:
        for epoch in range(start_epoch, config.epochs):
            run.epoch(epoch, partial if epoch == start_epoch else None)
    return run.result


@dataclass
class _FitRun:
    """One call of ``fit``: its pieces, and the epoch, the step and the two ways an epoch ends."""

    model: nn.Module
    loader: Sequence
    config: TrainConfig
    device: torch.device
    stepper: Stepper
    group: Replicas
    state: TrainState
    terms: list[LossTerm]
    callbacks: list[EpochCallback]
    step_callbacks: list[StepCallback]
    eval_loader: Batches | None
    eval_name: str
    metrics: MetricsWriter | None
    reporter: Reporter
    watch: Callable[[dict[str, Any]], None] | None
    result: FitResult = field(default_factory=FitResult)
    step_model: nn.Module | None = None  # the objective, DDP-wrapped in a group
    guard: InterruptGuard | None = None

    def __post_init__(self) -> None:
        self.steps_per_epoch = max(len(self.loader), 1)
        self.total_steps = max(self.config.epochs * self.steps_per_epoch, 1)

    def resume(self) -> tuple[int, dict[str, Any] | None]:
        """Restore the checkpoint: (the epoch to start at, its mid-epoch state or None)."""
        resumed = self.state.restore()
        self.result.history, self.result.resumed_from_epoch = resumed.history, resumed.last_epoch
        if self.metrics is not None and self.group.main:
            self.metrics.truncate_after(resumed.last_epoch)
        where = f"(checkpoint {self.state.path})"
        if resumed.partial is not None:
            self.result.resumed_at_step = resumed.partial["steps"]
            self.reporter.log(f"resuming epoch {resumed.last_epoch + 2} after step {resumed.partial['steps']} {where}")
        else:
            self.reporter.log(f"resuming from the end of epoch {resumed.last_epoch + 1} {where}")
        return resumed.last_epoch + 1, resumed.partial

    def epoch(self, epoch: int, partial: dict[str, Any] | None) -> None:
        """Train one epoch (the rest of it after ``partial``'s steps), then end it."""
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        self.step_model.train()
        tally = EpochTally([t.name for t in self.terms], self.device)
        if partial is not None:  # resuming mid-epoch
            tally.resume(partial, self.group.main, self.group.world)
        with self.reporter.bar(f"epoch {epoch + 1}/{self.config.epochs}", self.steps_per_epoch) as bar:
            for i, (x, y) in enumerate(self.loader):
                if i < tally.skip:  # trained on before the interruption; iterating keeps the epoch's order
                    bar.advance()
                    continue
                received = self.step(epoch, i, x, y, tally)
                bar.advance(f"loss {tally.running_loss / tally.n_batches:.3f}")
                if received is not None:
                    self.stop_mid_epoch(received, epoch, i, tally)
        self.end_epoch(epoch, tally)

    def step(self, epoch: int, i: int, x: torch.Tensor, y: torch.Tensor, tally: EpochTally) -> int | None:
        """Batch ``i`` of ``epoch``: forward, loss, optimizer step; return a signal received or None."""
        step, where = epoch * self.steps_per_epoch + i, f"epoch {epoch + 1}, step {i + 1}"
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        task_loss = self.group.task_loss(y)
        logits, values = self.step_model(x)
        task = task_loss(logits)
        loss = task
        for term, value in zip(self.terms, values):
            tally.sums[term.name] += value.detach()
            loss = loss + term.weight_at(step / self.total_steps) * value
        loss_value = self.group.check_before_step(loss, where)
        self.stepper.step(loss, step)
        for step_callback in self.step_callbacks:
            step_callback(self.model, (step + 1) / self.total_steps)
        loss_value, received = self.group.after_step(loss, loss_value, self.guard.received, where)
        tally.add_step(self.group.summed(loss, loss_value), loss_value, task, logits, y)
        return received

    def stop_mid_epoch(self, received: int, epoch: int, i: int, tally: EpochTally) -> None:
        """A signal arrived during step ``i``: write the exact state reached (if keeping a checkpoint), stop."""
        saved = None
        if self.state.path is not None:
            saved = self.state.save(epoch - 1, self.result.history,
                                    partial=lambda: tally.partial(epoch, i + 1, self.group.reduce))
        raise interrupted(received, saved, f"epoch {epoch + 1}, step {i + 1}/{self.steps_per_epoch}")

    def end_epoch(self, epoch: int, tally: EpochTally) -> None:
        """The epoch's record (evaluation, callbacks), metrics, log, checkpoint; stop if signalled."""
        record = tally.record(epoch, self.stepper.lr, self.group.reduce)
        self.stepper.end_epoch()
        if self.eval_loader is not None:
            record[f"{self.eval_name}_loss"], record[f"{self.eval_name}_acc"] = evaluate(
                self.model, self.eval_loader, self.device)
        for callback in self.callbacks:
            record.update(callback(epoch, self.model))
        record["epoch_s"] = time.perf_counter() - tally.t0
        self.result.history.append(record)
        if self.metrics is not None and self.group.main:
            self.metrics.write(record)
        self.reporter.log(epoch_line(record, self.config.epochs, self.eval_name))
        if self.watch is not None:
            self.watch(record)
        if self.state.path is not None:
            self.state.save(epoch, self.result.history)
        received = self.group.any_received(self.guard.received, self.device)
        if received is not None:  # arrived during the evaluation, callbacks or checkpoint
            raise interrupted(received, str(self.state.path) if self.state.path is not None else None,
                              f"the end of epoch {epoch + 1}")
