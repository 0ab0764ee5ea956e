"""What a search needs around its strategy (ReLeQ, Elthakeb et al., METHODS.md section 5): bit
lists parsed, the evaluator's data (a train subset and the validation split, never test) and a
progress line per evaluated plan. The budget of a resumed search is
``lowbit.search.budget.remaining_budget``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.data import ArrayLoader, DatasetSplits
from lowbit.errors import ConfigError
from lowbit.quant.bits import LOW_BITS, check_bits
from lowbit.search.evaluator import Evaluator
from lowbit.search.space import Choices
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
        self.log(choices, acc)
        return acc

    def log(self, choices: Choices, accuracy: float) -> None:
        """The line for one evaluated plan (also a ParallelEvaluator's ``on_result``)."""
        self.count += 1
        self.reporter.log(f"{self.label} {self.count}: {', '.join(f'{w}/{a}' for w, a in choices)} "
                          f"-> val accuracy {100 * accuracy:.2f}%")

    def float_accuracy(self) -> float:
        return self.inner.float_accuracy()

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.inner, "describe", None)
        return describe() if callable(describe) else {"class": type(self.inner).__name__}


