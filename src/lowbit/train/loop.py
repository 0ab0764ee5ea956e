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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import CheckpointError, NumericsError, TrainingInterrupted
from lowbit.train import distributed as dist_
from lowbit.train.checkpoint import load_checkpoint, save_checkpoint
from lowbit.train.interrupt import InterruptGuard, signal_name
from lowbit.train.config import TrainConfig, build_optimizer, build_scheduler, warmup_factor
from lowbit.train.metrics import MetricsWriter
from lowbit.train.progress import QUIET, Reporter

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LossTerm:
    """An extra loss: ``weight(progress) * fn(model)``, progress = step / total steps in [0, 1]."""

    name: str
    fn: Callable[[nn.Module], torch.Tensor]
    weight: Callable[[float], float] | float = 1.0

    def weight_at(self, progress: float) -> float:
        return float(self.weight(progress)) if callable(self.weight) else float(self.weight)


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


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    # RNG states must be CPU ByteTensors, whatever device the checkpoint was mapped to
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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
    optimizer = build_optimizer(model, config, no_decay)
    scheduler = build_scheduler(optimizer, config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    result, start_epoch = FitResult(), 0
    ddp, world = dist_.is_distributed(), dist_.world_size()
    main = dist_.is_main_process()
    if not main:
        reporter = QUIET
    partial: dict[str, Any] | None = None

    if resume:
        if checkpoint_path is None or not Path(checkpoint_path).exists():
            raise CheckpointError(f"--resume: no checkpoint to resume from at {checkpoint_path}")
        # loaded on the CPU: load_state_dict copies onto the model's/optimizer's device, and the
        # RNG states must stay CPU tensors
        state = load_checkpoint(checkpoint_path, map_location="cpu")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if use_amp and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            rng, last_epoch = state["rng"], int(state["epoch"])
            partial = _read_partial(state.get("partial"), last_epoch)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{checkpoint_path} does not match this model/run: {exc}") from None
        _set_rng_state(rng)
        start_epoch = last_epoch + 1
        result.history = list(state.get("history", []))
        result.resumed_from_epoch = last_epoch
        if metrics is not None and main:
            metrics.truncate_after(last_epoch)
        if partial is not None:
            result.resumed_at_step = partial["steps"]
            reporter.log(f"resuming epoch {start_epoch + 1} after step {partial['steps']} "
                         f"(checkpoint {checkpoint_path})")
        else:
            reporter.log(f"resuming from the end of epoch {start_epoch} (checkpoint {checkpoint_path})")

    def train_state(epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "train-state", "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(), "history": result.history,
                **(checkpoint_extra or {}), **extra}

    steps_per_epoch = max(len(train_loader), 1)
    total_steps = max(config.epochs * steps_per_epoch, 1)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    step_model: nn.Module = _Objective(model, loss_terms, device.type, use_amp)
    if ddp:
        if not resume and start_epoch < config.epochs:
            dist_.first_batch_init(model, train_loader, start_epoch, device, use_amp)
        step_model = dist_.wrap_ddp(step_model, device)
    with InterruptGuard() as guard:
        for epoch in range(start_epoch, config.epochs):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            step_model.train()
            t0 = time.perf_counter()
            # running sums stay on the device (float64); the finite check is the step's one host sync
            sums = {name: torch.zeros((), dtype=torch.float64, device=device)
                    for name in ("loss", "task_loss", *(t.name for t in loss_terms))}
            correct = torch.zeros((), dtype=torch.long, device=device)
            seen, n_batches, running_loss, skip = 0, 0, 0.0, 0
            if partial is not None and partial["epoch"] == epoch:  # resuming mid-epoch
                # saved as totals over ranks: rank 0 carries them (x world for the mean-like sums)
                share = 1 if main else 0
                skip, seen, n_batches, running_loss = (partial["steps"], share * partial["seen"],
                                                       partial["n_batches"], partial["running_loss"])
                correct += share * partial["correct"].to(device)
                for name, value in partial["sums"].items():
                    if name in sums:
                        sums[name] += (share * world) * value.to(device)
                t0 -= partial["elapsed_s"]
                partial = None
            with reporter.bar(f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch) as bar:
                for i, (x, y) in enumerate(train_loader):
                    if i < skip:  # trained on before the interruption; iterating keeps the epoch's order
                        bar.advance()
                        continue
                    step = epoch * steps_per_epoch + i
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    count = dist_.GlobalCount(y.numel(), device) if ddp else None
                    logits, values = step_model(x)
                    task = (F.cross_entropy(logits.float(), y) if count is None else  # DDP averages over ranks:
                            F.cross_entropy(logits.float(), y, reduction="sum") * (world / count.wait()))
                    loss = task
                    for term, value in zip(loss_terms, values):
                        sums[term.name] += value.detach()
                        loss = loss + term.weight_at(step / total_steps) * value
                    if not ddp:  # distributed: checked after the step, together with the other ranks
                        loss_value = loss.item()
                        _check_loss(loss_value, epoch, i)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if config.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    if step < warmup_steps:  # the context only while warming up: nothing extra afterwards
                        with _warmed_up(optimizer, warmup_factor(step, warmup_steps)):
                            scaler.step(optimizer)
                    else:
                        scaler.step(optimizer)
                    scaler.update()
                    for step_callback in step_callbacks:
                        step_callback(model, (step + 1) / total_steps)
                    received = None
                    if ddp:  # one collective per step: all ranks see the same loss check and signal
                        loss_value, received = dist_.agree_after_step(loss, guard.received)
                        _check_loss(loss_value, epoch, i)
                    sums["loss"] += loss.detach() if ddp else loss_value
                    running_loss += loss_value
                    sums["task_loss"] += task.detach()
                    seen += y.numel()
                    n_batches += 1
                    correct += (logits.argmax(1) == y).sum()
                    bar.advance(f"loss {running_loss / n_batches:.3f}")
                    if not ddp:
                        received = guard.received
                    if received is not None:
                        saved = None
                        if checkpoint_path is not None:
                            _check_finite(model, epoch)
                            p_sums, p_correct, p_seen = (dist_.reduce_sums(sums, correct, seen) if ddp
                                                         else (sums, correct, seen))
                            if main:
                                save_checkpoint(checkpoint_path, train_state(epoch - 1, {"partial": {
                                    "epoch": epoch, "steps": i + 1, "seen": p_seen, "n_batches": n_batches,
                                    "running_loss": running_loss, "correct": p_correct.cpu(),
                                    "sums": {k: v.cpu() for k, v in p_sums.items()},
                                    "elapsed_s": time.perf_counter() - t0}}))
                            dist_.barrier()
                            saved = str(checkpoint_path)
                        raise _interrupted(received, saved, f"epoch {epoch + 1}, step {i + 1}/{steps_per_epoch}")
            n_batches = max(n_batches, 1)
            if ddp:
                sums, correct, seen = dist_.reduce_sums(sums, correct, seen)
            record: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            record.update({f"train_{k}" if k in ("loss", "task_loss") else k: v.item() / n_batches
                           for k, v in sums.items()})
            record["train_acc"] = correct.item() / seen if seen else float("nan")
            scheduler.step()
            if eval_loader is not None:
                record[f"{eval_name}_loss"], record[f"{eval_name}_acc"] = evaluate(model, eval_loader, device)
            for callback in callbacks:
                record.update(callback(epoch, model))
            record["epoch_s"] = time.perf_counter() - t0
            result.history.append(record)
            if metrics is not None and main:
                metrics.write(record)
            reporter.log(_epoch_line(record, config.epochs, eval_name))
            if watch is not None:
                watch(record)
            if checkpoint_path is not None:
                _check_finite(model, epoch)
                if main:
                    save_checkpoint(checkpoint_path, train_state(epoch, {}))
                dist_.barrier()
            received = dist_.any_received(guard.received, device)
            if received is not None:  # arrived during the evaluation, callbacks or checkpoint
                raise _interrupted(received, str(checkpoint_path) if checkpoint_path is not None else None,
                                   f"the end of epoch {epoch + 1}")
    return result


@contextmanager
def _warmed_up(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """The scheduled LR times ``factor`` for one optimizer step (the schedule's own state untouched)."""
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, scheduled):
        group["lr"] = lr * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr


def _check_loss(loss_value: float, epoch: int, i: int) -> None:
    if not math.isfinite(loss_value):
        raise NumericsError(f"non-finite loss ({loss_value}) at epoch {epoch + 1}, step {i + 1}; "
                            "stopping (no checkpoint written for this epoch)")


def _read_partial(partial: Any, last_epoch: int) -> dict[str, Any] | None:
    """The mid-epoch state of an interrupted run's checkpoint (None: it ended at an epoch's end)."""
    if partial is None:
        return None
    if not isinstance(partial, dict) or int(partial["epoch"]) != last_epoch + 1:
        raise ValueError("malformed 'partial' (mid-epoch) state")
    out = {k: int(partial[k]) for k in ("epoch", "steps", "seen", "n_batches")}
    out.update(running_loss=float(partial["running_loss"]), elapsed_s=float(partial["elapsed_s"]))
    if not isinstance(partial["correct"], torch.Tensor) or not isinstance(partial["sums"], dict):
        raise TypeError("malformed 'partial' (mid-epoch) state")
    out.update(correct=partial["correct"], sums=dict(partial["sums"]))
    return out


def _interrupted(signum: int, checkpoint: str | None, where: str) -> TrainingInterrupted:
    if checkpoint is not None:
        detail = f"checkpoint written to {checkpoint}; continue with --resume"
    else:
        detail = "this training keeps no checkpoint of its own, so there is nothing to resume it from"
    return TrainingInterrupted(f"interrupted by {signal_name(signum)} at {where} (the step was finished); {detail}",
                               signal_number=signum, checkpoint=checkpoint)


def _check_finite(model: nn.Module, epoch: int) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NumericsError(f"{name} holds non-finite values after epoch {epoch + 1}; no checkpoint written")


def _epoch_line(record: dict[str, Any], epochs: int, eval_name: str) -> str:
    line = (f"epoch {record['epoch'] + 1:>3}/{epochs}  loss {record['train_loss']:.4f}  "
            f"train {100 * record['train_acc']:5.2f}%")
    if f"{eval_name}_acc" in record:
        line += f"  {eval_name} {100 * record[f'{eval_name}_acc']:5.2f}%"
    return line + f"  lr {record['lr']:.4g}  {record['epoch_s']:.1f}s"
