"""One optimizer step for every training loop in lowbit, and a short loop built on it.

:class:`Stepper` owns the optimizer, the LR schedule, the GradScaler (AMP), the linear warm-up and
gradient clipping, and does ``zero_grad -> backward -> clip -> step -> scaler update`` in that
order. ``fit`` drives it epoch by epoch; :func:`train_steps` and :func:`train_budget` drive it
for callers with their own loss on their own batch shape (DCQ's sections on ``(x, target, y)``,
the search's per-plan fine-tune on a step budget). A non-finite loss raises
:class:`NonFiniteLoss` (a :class:`~lowbit.errors.NumericsError`), or with ``on_nonfinite="stop"``
ends the run quietly, marked ``diverged``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from lowbit.errors import ConfigError, DataError, NumericsError
from lowbit.train.config import TrainConfig, build_optimizer, build_scheduler, warmup_factor
from lowbit.train.terms import LossTerm

Batch = TypeVar("Batch")
OnNonFinite = Literal["raise", "stop"]


class NonFiniteLoss(NumericsError):
    """The loss of a step was NaN or infinite (nothing was stepped)."""

    def __init__(self, value: float, where: str, detail: str = "") -> None:
        super().__init__(f"non-finite loss ({value}) at {where}" + (f"; {detail}" if detail else ""))
        self.value = value


def check_loss(value: float, where: str, detail: str = "") -> float:
    """``value`` if finite, else :class:`NonFiniteLoss` naming ``where`` it happened."""
    if not math.isfinite(value):
        raise NonFiniteLoss(value, where, detail)
    return value


class Stepper:
    """The optimizer step of a training loop (see the module docstring).

    ``use_amp`` scales the loss with a GradScaler (CUDA); ``warmup_steps`` multiplies the
    scheduled LR by ``(index + 1) / warmup_steps`` for the first optimizer steps. Gradients are
    clipped to ``config.grad_clip`` over ``model``'s parameters (unscaled first under AMP).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, *,
                 no_decay: Callable[[str], bool] = lambda name: False,
                 use_amp: bool = False, warmup_steps: int = 0) -> None:
        self.model = model
        self.optimizer = build_optimizer(model, config, no_decay)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        self.use_amp, self.grad_clip, self.warmup_steps = use_amp, config.grad_clip, warmup_steps

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor, index: int = 0) -> None:
        """Backpropagate ``loss`` and step; ``index`` is the 0-based optimizer step (for warm-up)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if index < self.warmup_steps:  # the context only while warming up: nothing extra afterwards
            with _warmed_up(self.optimizer, warmup_factor(index, self.warmup_steps)):
                self.scaler.step(self.optimizer)
        else:
            self.scaler.step(self.optimizer)
        self.scaler.update()

    def end_epoch(self) -> float:
        """Advance the LR schedule by one epoch; return the LR the epoch trained at."""
        lr = self.lr
        self.scheduler.step()
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Optimizer and schedule; the GradScaler's state only when AMP is on here and it was saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.use_amp and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


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


# ---- a loop for callers with their own loss and batches --------------------------------------

@dataclass
class StepRun:
    """What :func:`train_steps` / :func:`train_budget` did: the steps taken, the sum of their
    losses (in step order) and whether a non-finite loss stopped it (``on_nonfinite="stop"``)."""

    steps: int = 0
    loss_sum: float = 0.0
    diverged: bool = False


def with_terms(loss: torch.Tensor, model: nn.Module, terms: Sequence[LossTerm], progress: float = 0.0) -> torch.Tensor:
    """``loss`` plus every term's weighted value (the terms computed after the loss, in order)."""
    for term in terms:
        loss = loss + term.weight_at(progress) * term.fn(model)
    return loss


def train_steps(stepper: Stepper, batches: Iterable[Batch], loss_fn: Callable[[Batch], torch.Tensor], *,
                terms: Sequence[LossTerm] = (), max_steps: int | None = None,
                on_nonfinite: OnNonFinite = "raise", where: str = "", first_step: int = 0) -> StepRun:
    """One pass over ``batches`` (at most ``max_steps`` steps): ``loss_fn(batch)`` plus ``terms``
    (at their weight for progress 0: constant), checked finite (the step's one host sync), then
    ``stepper.step``. ``first_step`` is the optimizer step this pass starts at (for warm-up). The
    caller puts the model in training mode and advances the schedule."""
    if on_nonfinite not in ("raise", "stop"):
        raise ConfigError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    run = StepRun()
    for batch in batches:
        loss = with_terms(loss_fn(batch), stepper.model, terms)
        value = loss.item()
        if not math.isfinite(value) and on_nonfinite == "stop":
            run.diverged = True
            return run
        check_loss(value, f"{where}, step {run.steps + 1}" if where else f"step {run.steps + 1}")
        stepper.step(loss, first_step + run.steps)
        run.steps += 1
        run.loss_sum += value
        if max_steps is not None and run.steps >= max_steps:
            break
    return run


def train_budget(stepper: Stepper, loader: Iterable[Batch], loss_fn: Callable[[Batch], torch.Tensor], *,
                 steps: int, terms: Sequence[LossTerm] = (), on_nonfinite: OnNonFinite = "raise",
                 name: str = "the training loader") -> StepRun:
    """``steps`` optimizer steps over ``loader``'s epochs 0, 1, ... (``set_epoch`` when it has
    one), stopping mid-epoch when the budget is spent; DataError if an epoch yields no batch."""
    total, epoch = StepRun(), 0
    while total.steps < steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        run = train_steps(stepper, loader, loss_fn, terms=terms, max_steps=steps - total.steps,
                          on_nonfinite=on_nonfinite, where=f"epoch {epoch + 1}", first_step=total.steps)
        total.steps += run.steps
        total.loss_sum += run.loss_sum
        total.diverged = run.diverged
        if run.diverged:
            break
        if run.steps == 0:
            raise DataError(f"{name} yields no batches")
        epoch += 1
    return total
