"""The evaluation budget of a bitwidth search, ReLeQ (Elthakeb et al.), METHODS.md section 5
("random search and greedy descent under the same evaluator, cache and evaluation budget").

A :class:`Budget` is a limit on *new* evaluations (``max_evals``; plans served from the cache do
not count, they cost nothing) and/or on wall-clock time (``time_limit_s``). ``budget.start(ev)``
returns a :class:`BudgetTracker` that counts from that moment: the evaluations ``ev`` makes after
it (``ev.evaluations`` minus its value at the start) and the seconds since. A search checks
``tracker.exhausted()`` before asking for a new evaluation; an evaluation already running is
never interrupted, so the wall clock can overrun by one evaluation. ``tracker.check()`` raises
:class:`BudgetExhausted` instead (for loops that prefer an exception). No limit at all is allowed
(the search then ends on its own terms).

Resumed budget: the evaluation budget is the whole search's, not each session's. A resumed search
replays its plans from the cache file (free) and then may make only ``max_evals`` minus the
evaluations already in the cache; its time limit is reduced by the evaluation time recorded there.
So a resumed finished search makes no new evaluation, and a resumed interrupted one ends where
the uninterrupted run would have (random and greedy search replay the same plans in order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from lowbit.errors import ConfigError, LowbitError


class BudgetExhausted(LowbitError):
    """The search's evaluation or time budget is spent."""


class CountsEvaluations(Protocol):
    evaluations: int


@dataclass(frozen=True)
class Budget:
    max_evals: int | None = None
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_evals is not None and (isinstance(self.max_evals, bool) or not isinstance(self.max_evals, int)
                                           or self.max_evals < 1):
            raise ConfigError(f"max_evals must be a positive integer or None, got {self.max_evals!r}")
        if self.time_limit_s is not None and (isinstance(self.time_limit_s, bool)
                                              or not isinstance(self.time_limit_s, (int, float))
                                              or not self.time_limit_s > 0):
            raise ConfigError(f"time_limit_s must be a number > 0 or None, got {self.time_limit_s!r}")

    @property
    def unlimited(self) -> bool:
        return self.max_evals is None and self.time_limit_s is None

    def start(self, evaluator: CountsEvaluations) -> BudgetTracker:
        return BudgetTracker(self, evaluator)

    def to_dict(self) -> dict[str, Any]:
        return {"max_evals": self.max_evals, "time_limit_s": self.time_limit_s}


class BudgetTracker:
    """Counts one search's new evaluations and seconds against a :class:`Budget`."""

    def __init__(self, budget: Budget, evaluator: CountsEvaluations) -> None:
        self.budget = budget
        self.evaluator = evaluator
        self._evals0 = evaluator.evaluations
        self._t0 = time.perf_counter()

    @property
    def used_evals(self) -> int:
        return self.evaluator.evaluations - self._evals0

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._t0

    def exhausted(self) -> bool:
        if self.budget.max_evals is not None and self.used_evals >= self.budget.max_evals:
            return True
        return self.budget.time_limit_s is not None and self.elapsed_s >= self.budget.time_limit_s

    def check(self) -> None:
        if self.exhausted():
            raise BudgetExhausted(f"search budget spent: {self.used_evals} new evaluation(s) in "
                                  f"{self.elapsed_s:.1f}s (limits: {self.budget.to_dict()})")


class CachedRecords(Protocol):
    """What a resumed budget reads of a cached evaluator: the records loaded from its file."""

    loaded: int
    records: list[Any]


@dataclass(frozen=True)
class ResumedBudget(Budget):
    """A :class:`Budget` part of which an earlier session spent (module docstring)."""

    spent_evals: int = 0
    spent_s: float = 0.0

    def start(self, evaluator: CountsEvaluations) -> BudgetTracker:
        return _ResumedTracker(self, evaluator)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "spent_evals": self.spent_evals, "spent_s": self.spent_s}


class _ResumedTracker(BudgetTracker):
    budget: ResumedBudget

    @property
    def used_evals(self) -> int:
        return super().used_evals + self.budget.spent_evals

    @property
    def elapsed_s(self) -> float:
        return super().elapsed_s + self.budget.spent_s


def remaining_budget(max_evals: int | None, time_limit: float | None, evaluator: CachedRecords) -> Budget:
    """The budget left: all of it, or what the records loaded from the cache file have not spent."""
    if not evaluator.loaded:
        return Budget(max_evals, time_limit)
    return ResumedBudget(max_evals, time_limit, spent_evals=evaluator.loaded,
                         spent_s=sum(r.wall_s for r in evaluator.records))
