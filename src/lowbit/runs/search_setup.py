"""Pieces of ``lowbit search`` / ``lowbit releq`` (ReLeQ, Elthakeb et al., METHODS.md section 5) that
are not the search itself: parsing bit lists, the evaluator's data, progress lines per evaluation,
and the budget of a resumed search.

Resumed budget: the evaluation budget is the whole search's, not each session's. A resumed search
replays its plans from the cache file (free) and then may make only ``max_evals`` minus the
evaluations already in the cache; its time limit is reduced by the evaluation time recorded there.
So a resumed finished search makes no new evaluation, and a resumed interrupted one ends where
the uninterrupted run would have (random and greedy search replay the same plans in order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.data import ArrayLoader, DatasetSplits
from lowbit.errors import ConfigError
from lowbit.quant.bits import LOW_BITS, check_bits
from lowbit.search import Budget, BudgetTracker, CachedEvaluator, Choices, Evaluator
from lowbit.search.budget import CountsEvaluations
from lowbit.train import Reporter


def parse_bits(text: str, flag: str) -> tuple[int, ...]:
    """``"2,3,4,5,8"`` -> ``(2, 3, 4, 5, 8)``: integers in 1..8, each once."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{flag} needs a comma-separated list of bitwidths, e.g. 2,3,4,5,8")
    try:
        values = [int(item) for item in items]
    except ValueError:
        raise ConfigError(f"{flag} must list integer bitwidths separated by commas, e.g. 2,3,4,5,8; "
                          f"got {text!r}") from None
    checked = [check_bits(v, allowed=LOW_BITS, what=f"{flag} value") for v in values]
    if len(set(checked)) != len(checked):
        raise ConfigError(f"{flag} lists a bitwidth more than once: {text!r}")
    return tuple(sorted(checked))


def evaluator_loaders(data: DatasetSplits, train_size: int, batch_size: int, seed: int
                      ) -> tuple[ArrayLoader, ArrayLoader]:
    """(training subset, validation split) for the evaluator: ``train_size`` samples of the train
    split (drawn with ``seed``; all of it when smaller) and the split held out from train. The
    test split is not an argument: the search never sees it."""
    if data.val is None:
        raise ConfigError("the search needs a validation split held out from train (val_fraction > 0)")
    n = len(data.train)
    indices = np.sort(np.random.default_rng(seed).permutation(n)[:min(train_size, n)])
    train = ArrayLoader(data.train, batch_size=batch_size, shuffle=True, seed=seed, mean=data.mean, std=data.std,
                        indices=indices)
    val = ArrayLoader(data.val, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    return train, val


class LoggedEvaluator:
    """An evaluator that says one line per new evaluation (the cache calls it only for new plans).
    ``describe()`` is the inner one's, so the cache file's header does not change."""

    def __init__(self, inner: Evaluator, reporter: Reporter, label: str) -> None:
        self.inner, self.reporter, self.label = inner, reporter, label
        self.count = 0

    def __call__(self, choices: Choices) -> float:
        acc = self.inner(choices)
        self.count += 1
        self.reporter.log(f"{self.label} {self.count}: {', '.join(f'{w}/{a}' for w, a in choices)} "
                          f"-> val accuracy {100 * acc:.2f}%")
        return acc

    def float_accuracy(self) -> float:
        return self.inner.float_accuracy()

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.inner, "describe", None)
        return describe() if callable(describe) else {"class": type(self.inner).__name__}


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


def search_budget(max_evals: int | None, time_limit: float | None, evaluator: CachedEvaluator) -> Budget:
    """The budget left: all of it, or what the records loaded from the cache file have not spent."""
    if not evaluator.loaded:
        return Budget(max_evals, time_limit)
    return ResumedBudget(max_evals, time_limit, spent_evals=evaluator.loaded,
                         spent_s=sum(r.wall_s for r in evaluator.records))
