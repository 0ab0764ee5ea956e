"""lowbit's documented errors.

Every mistake a user can make (a bad bitwidth, an unknown model, a missing data file, a corrupt
checkpoint) raises a subclass of :class:`LowbitError` whose message names the problem and what
is allowed instead. The CLI prints these without a traceback; anything else is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class BitwidthError(LowbitError, ValueError):
    """A bitwidth outside 1..8 (or 32 = float), or one a quantizer does not define."""


class PlanError(LowbitError, ValueError):
    """A malformed plan, or a plan entry that matches no layer."""


class ConfigError(LowbitError, ValueError):
    """A bad command-line or config value: unknown key, wrong type, value not allowed."""


class UnknownNameError(ConfigError, KeyError):
    """An unknown model, dataset or quantizer name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(LowbitError):
    """A data file that is missing, unreadable or not in the expected format."""


class CheckpointError(LowbitError):
    """A checkpoint or run folder that is missing, truncated, corrupt or incompatible."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown registry name, listing the allowed ones."""
    choices = sorted(choices)
    return UnknownNameError(
        f"unknown {kind} {name!r}{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}"
    )


class NumericsError(LowbitError):
    """A loss or weight became NaN or infinite during training."""


EXIT_UNHEALTHY = 3


class UnhealthyRunError(LowbitError):
    """``--strict``: the run finished and wrote its folder, but failed a health check (lowbit.health)."""

    exit_code = EXIT_UNHEALTHY


# Exit codes of an interrupted command: the shell's 128 + signal number.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class TrainingInterrupted(LowbitError):
    """SIGINT (Ctrl-C) or SIGTERM stopped training after the current step.

    ``checkpoint`` is the checkpoint written on the way out (None when the caller keeps none, or
    when a second signal stopped at once); ``exit_code`` is 128 + the signal number (130 for
    SIGINT, 143 for SIGTERM), which the CLI exits with.
    """

    def __init__(self, message: str, *, signal_number: int = 2, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.checkpoint = checkpoint
        self.exit_code = 128 + signal_number

    def __reduce__(self):  # picklable, so it crosses from a worker process (DCQ's section training) intact
        return (type(self), (str(self),), dict(self.__dict__))
