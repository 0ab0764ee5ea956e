"""``fit``'s train state: what a checkpoint holds, writing it and resuming from it.

A checkpoint holds the model, the optimizer, LR schedule and GradScaler (:class:`Stepper`), the
RNG states and the epoch history; one written mid-epoch (an interrupt) also holds ``partial``:
the epoch in progress, the steps done in it and its running sums (:mod:`lowbit.train.tally`).
In a DDP group rank 0 alone writes while the others wait at a barrier; every rank reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import CheckpointError, NumericsError
from lowbit.train import distributed as dist_
from lowbit.train.checkpoint import load_checkpoint, save_checkpoint
from lowbit.train.step import Stepper


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # RNG states must be CPU ByteTensors, whatever device the checkpoint was mapped to
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def check_finite(model: nn.Module, epoch: int) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NumericsError(f"{name} holds non-finite values after epoch {epoch + 1}; no checkpoint written")


def read_partial(partial: Any, last_epoch: int) -> dict[str, Any] | None:
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


@dataclass
class Resumed:
    """What a checkpoint gives back: the last complete epoch, the history, the mid-epoch state."""

    last_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None


class TrainState:
    """Saves and restores ``model`` and ``stepper`` at ``path`` (None: this training keeps no checkpoint)."""

    def __init__(self, path: str | Path | None, model: nn.Module, stepper: Stepper,
                 extra: dict[str, Any] | None = None, main: bool = True) -> None:
        self.path, self.model, self.stepper, self.extra, self.main = path, model, stepper, extra or {}, main

    def save(self, last_epoch: int, history: list[dict[str, Any]],
             partial: Callable[[], dict[str, Any]] | None = None) -> str:
        """Check the weights are finite, then write the state after ``last_epoch`` (plus the
        epoch in progress that ``partial()`` describes, called on every rank); return the path."""
        check_finite(self.model, last_epoch + 1 if partial is not None else last_epoch)
        extra = {"partial": partial()} if partial is not None else {}
        if self.main:
            save_checkpoint(self.path, {"kind": "train-state", "epoch": last_epoch, "model": self.model.state_dict(),
                                        **self.stepper.state_dict(), "rng": rng_state(), "history": history,
                                        **self.extra, **extra})
        dist_.barrier()
        return str(self.path)

    def restore(self) -> Resumed:
        """Load the model, the stepper and the RNG states; CheckpointError if missing or foreign."""
        if self.path is None or not Path(self.path).exists():
            raise CheckpointError(f"--resume: no checkpoint to resume from at {self.path}")
        # loaded on the CPU: load_state_dict copies onto the model's/optimizer's device, and the
        # RNG states must stay CPU tensors
        state = load_checkpoint(self.path, map_location="cpu")
        try:
            self.model.load_state_dict(state["model"])
            self.stepper.load_state_dict(state)
            rng, last_epoch = state["rng"], int(state["epoch"])
            partial = read_partial(state.get("partial"), last_epoch)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.path} does not match this model/run: {exc}") from None
        set_rng_state(rng)
        return Resumed(last_epoch, list(state.get("history", [])), partial)
