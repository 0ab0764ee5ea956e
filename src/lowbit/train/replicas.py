"""What ``fit`` does differently in one process and in a DDP group, as two small classes.

:class:`SingleProcess` checks the loss before the step and keeps its sums local;
:class:`DataParallel` (a ``torch.distributed`` group of more than one process, see
:mod:`lowbit.train.distributed`) wraps the objective in DistributedDataParallel, scales each
rank's cross-entropy to the global batch, checks the loss after the step together with the
other ranks (one collective that also agrees on a signal) and reduces the epoch's sums.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.train import distributed as dist_
from lowbit.train.step import check_loss

NONFINITE_DETAIL = "stopping (no checkpoint written for this epoch)"
Sums = tuple[dict[str, torch.Tensor], torch.Tensor, int]


class SingleProcess:
    """One process: no wrapping, the loss checked before the step (the step's one host sync)."""

    main, world = True, 1

    def wrap(self, objective: nn.Module, model: nn.Module, loader: Any, *, fresh: bool,
             device: torch.device, use_amp: bool) -> nn.Module:
        return objective

    def task_loss(self, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The batch's cross-entropy as a function of the logits (started before the forward)."""
        return lambda logits: F.cross_entropy(logits.float(), y)

    def check_before_step(self, loss: torch.Tensor, where: str) -> float | None:
        return check_loss(loss.item(), where, NONFINITE_DETAIL)

    def after_step(self, loss: torch.Tensor, value: float | None, received: int | None,
                   where: str) -> tuple[float, int | None]:
        """(the step's loss value, the signal received or None)."""
        return value, received

    def summed(self, loss: torch.Tensor, value: float) -> torch.Tensor | float:
        """What the epoch's loss sum adds for this step."""
        return value

    def reduce(self, sums: dict[str, torch.Tensor], correct: torch.Tensor, seen: int) -> Sums:
        return sums, correct, seen

    def any_received(self, received: int | None, device: torch.device) -> int | None:
        return received


class DataParallel:
    """A DDP group: see :mod:`lowbit.train.loop` for what runs where."""

    def __init__(self) -> None:
        self.main, self.world = dist_.is_main_process(), dist_.world_size()

    def wrap(self, objective: nn.Module, model: nn.Module, loader: Any, *, fresh: bool,
             device: torch.device, use_amp: bool) -> nn.Module:
        if fresh:  # data-dependent state (LSQ's step) from the first global batch, as one process
            dist_.first_batch_init(model, loader, 0, device, use_amp)
        return dist_.wrap_ddp(objective, device)

    def task_loss(self, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        count = dist_.GlobalCount(y.numel(), y.device)  # DDP averages over ranks: sum * world / global batch
        return lambda logits: F.cross_entropy(logits.float(), y, reduction="sum") * (self.world / count.wait())

    def check_before_step(self, loss: torch.Tensor, where: str) -> float | None:
        return None  # checked after the step, together with the other ranks

    def after_step(self, loss: torch.Tensor, value: float | None, received: int | None,
                   where: str) -> tuple[float, int | None]:
        value, received = dist_.agree_after_step(loss, received)  # one collective per step
        return check_loss(value, where, NONFINITE_DETAIL), received

    def summed(self, loss: torch.Tensor, value: float) -> torch.Tensor | float:
        return loss.detach()

    def reduce(self, sums: dict[str, torch.Tensor], correct: torch.Tensor, seen: int) -> Sums:
        return dist_.reduce_sums(sums, correct, seen)

    def any_received(self, received: int | None, device: torch.device) -> int | None:
        return dist_.any_received(received, device)


Replicas = SingleProcess | DataParallel


def replicas() -> Replicas:
    """This process's way of training: :class:`DataParallel` in a group of more than one process."""
    return DataParallel() if dist_.is_distributed() else SingleProcess()
