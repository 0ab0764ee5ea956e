"""Deferring SIGINT (Ctrl-C) and SIGTERM while ``fit`` trains, and the error it stops with.

``fit`` installs :class:`InterruptGuard` around its epoch loop, and only there: the handlers
record the signal instead of raising in the middle of an optimizer step. ``fit`` checks
``guard.received`` after every step (and after each epoch's checkpoint); when set, it writes a
checkpoint of the exact state reached (mid-epoch, with the position in the epoch) and raises
:class:`~lowbit.errors.TrainingInterrupted`, whose ``exit_code`` (130 for SIGINT, 143 for
SIGTERM) the CLI exits with. A second signal while the step or the checkpoint is being
finished stops at once (the previous checkpoint is intact: writes are atomic).

Handlers are installed only in the main thread (Python delivers signals there); elsewhere the
guard does nothing. The previous handlers are restored when the guard exits.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from lowbit.errors import TrainingInterrupted

SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


def signal_name(signum: int) -> str:
    if signum == getattr(signal, "SIGINT", None):
        return "SIGINT (Ctrl-C)"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class InterruptGuard:
    """Context manager: while active, SIGINT/SIGTERM set ``received`` instead of stopping the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                try:
                    self._previous[signum] = signal.signal(signum, self._handle)
                except (ValueError, OSError):  # not the main interpreter, or not settable here
                    pass
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            # None: the previous handler was not installed from Python; the default is the best match
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise TrainingInterrupted(
                f"stopped at once by a second {signal_name(signum)}; the last checkpoint written "
                "(if any) is intact", signal_number=signum)
        self.received = signum

    @property
    def active(self) -> bool:
        """Whether handlers are installed (main thread)."""
        return bool(self._previous)


def interrupted(signum: int, checkpoint: str | None, where: str) -> TrainingInterrupted:
    """The error ``fit`` raises after finishing the step (and writing ``checkpoint``, if any) at ``where``."""
    if checkpoint is not None:
        detail = f"checkpoint written to {checkpoint}; continue with --resume"
    else:
        detail = "this training keeps no checkpoint of its own, so there is nothing to resume it from"
    return TrainingInterrupted(f"interrupted by {signal_name(signum)} at {where} (the step was finished); {detail}",
                               signal_number=signum, checkpoint=checkpoint)
