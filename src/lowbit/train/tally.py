"""An epoch of ``fit`` in numbers: its running sums, the mid-epoch state an interrupt saves, and
the metrics record (and log line) built from them at the end of the epoch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

Reduce = Callable[[dict[str, torch.Tensor], torch.Tensor, int], tuple[dict[str, torch.Tensor], torch.Tensor, int]]


class EpochTally:
    """Sums of the loss, the task loss and each term's value, kept on the device (float64) so
    that adding them needs no host sync; the correct predictions, the samples and the steps seen."""

    def __init__(self, term_names: Sequence[str], device: torch.device) -> None:
        self.t0 = time.perf_counter()
        self.sums = {name: torch.zeros((), dtype=torch.float64, device=device)
                     for name in ("loss", "task_loss", *term_names)}
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.device = device
        self.seen, self.n_batches, self.running_loss, self.skip = 0, 0, 0.0, 0

    def resume(self, partial: dict[str, Any], main: bool, world: int) -> None:
        """Continue the interrupted epoch ``partial`` describes (its first ``skip`` steps are done)."""
        # saved as totals over ranks: rank 0 carries them (x world for the mean-like sums)
        share = 1 if main else 0
        self.skip, self.seen, self.n_batches, self.running_loss = (partial["steps"], share * partial["seen"],
                                                                   partial["n_batches"], partial["running_loss"])
        self.correct += share * partial["correct"].to(self.device)
        for name, value in partial["sums"].items():
            if name in self.sums:
                self.sums[name] += (share * world) * value.to(self.device)
        self.t0 -= partial["elapsed_s"]

    def add_step(self, loss: torch.Tensor | float, value: float, task: torch.Tensor, logits: torch.Tensor,
                 y: torch.Tensor) -> None:
        """One step: ``loss`` into the loss sum (a tensor, or its value), ``value`` into the running
        mean the progress bar shows. The terms' values are added where they are computed."""
        self.sums["loss"] += loss
        self.running_loss += value
        self.sums["task_loss"] += task.detach()
        self.seen += y.numel()
        self.n_batches += 1
        self.correct += (logits.argmax(1) == y).sum()

    def partial(self, epoch: int, steps: int, reduce: Reduce) -> dict[str, Any]:
        """The state an interrupt after ``steps`` steps of ``epoch`` saves (sums over every rank)."""
        sums, correct, seen = reduce(self.sums, self.correct, self.seen)
        return {"epoch": epoch, "steps": steps, "seen": seen, "n_batches": self.n_batches,
                "running_loss": self.running_loss, "correct": correct.cpu(),
                "sums": {k: v.cpu() for k, v in sums.items()}, "elapsed_s": time.perf_counter() - self.t0}

    def record(self, epoch: int, lr: float, reduce: Reduce) -> dict[str, Any]:
        """The epoch's metrics: the mean loss, task loss and term values per step, the accuracy."""
        n_batches = max(self.n_batches, 1)
        sums, correct, seen = reduce(self.sums, self.correct, self.seen)
        record: dict[str, Any] = {"epoch": epoch, "lr": lr}
        record.update({f"train_{k}" if k in ("loss", "task_loss") else k: v.item() / n_batches
                       for k, v in sums.items()})
        record["train_acc"] = correct.item() / seen if seen else float("nan")
        return record


def epoch_line(record: dict[str, Any], epochs: int, eval_name: str) -> str:
    """The log line of a finished epoch."""
    line = (f"epoch {record['epoch'] + 1:>3}/{epochs}  loss {record['train_loss']:.4f}  "
            f"train {100 * record['train_acc']:5.2f}%")
    if f"{eval_name}_acc" in record:
        line += f"  {eval_name} {100 * record[f'{eval_name}_acc']:5.2f}%"
    return line + f"  lr {record['lr']:.4g}  {record['epoch_s']:.1f}s"
