"""Is a run learning? Checks that turn a silent collapse into a message, a ``health`` record and,
with ``--strict``, a non-zero exit.

A run that ends at chance accuracy with exit code 0 is worse than a crash: the user trusts it.
Three checks, each with the figures it read:

- ``learning`` (two epochs or more): the training loss fell: last epoch's task loss below 0.9 x
  the first epoch's, or already below half of ln(C) (a run started from trained float weights
  begins low);
- ``above_chance``: the final accuracy (validation when there is a split, else test) and the
  last epoch's training accuracy are at least 2 x chance (1/C for C classes);
- ``levels``: no quantized layer has (almost) every weight on one level (>= 99% of its weights
  quantize to the same value: the layer computes nothing).

:class:`HealthWatch` runs the first two on each epoch's metrics record during training and warns
once, early, with the flags to try; :func:`check_health` runs all three at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.errors import UnhealthyRunError
from lowbit.nn.convert import quantized_layers
from lowbit.train.progress import Reporter

CHANCE_FACTOR = 2.0  # accuracy below this multiple of chance counts as "at chance"
LOSS_DROP = 0.9  # the last epoch's loss must be below this share of the first's...
LOW_LOSS_SHARE = 0.5  # ...or below this share of ln(C), the loss of a uniform guess
ONE_LEVEL_SHARE = 0.99  # a layer with this share of its weights on one level has collapsed

HINTS = {
    "learning": ("the loss did not fall: the learning rate is likely too high (it diverged) or too low; "
                 "try --lr 5x lower, --warmup-epochs 1, --optimizer adam --lr 0.001, or start from float "
                 "weights with --init RUN (README: 'Default recipes')"),
    "above_chance": ("accuracy is at chance: try the recipe defaults (drop --lr/--optimizer), a float "
                     "--init, more --epochs, or more bits for the first/last layers (a --plan)"),
    "levels": ("a layer's weights all quantize to one level: its scale does not fit its weights (try "
               "--scale max or --scale learned), or a regularizer (--sinreq LAMBDA) is too strong"),
}


@dataclass
class Health:
    """The checks' verdicts with their figures (``result.json["health"]``)."""

    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check["ok"] for check in self.checks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check["ok"]]

    def problems(self) -> list[str]:
        return [f"{name}: {self.checks[name]['detail']}" for name in self.failed]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "checks": self.checks,
                "hints": [HINTS[name] for name in self.failed]}

    def report(self, reporter: Reporter, what: str = "the run") -> None:
        """One warning per failed check, with its hint; nothing when healthy."""
        for name in self.failed:
            reporter.warn(f"{what} looks unhealthy ({name}): {self.checks[name]['detail']}; {HINTS[name]}")

    def enforce(self, strict: bool, where: str) -> None:
        """Under ``--strict`` an unhealthy run raises :class:`UnhealthyRunError` (its folder is kept)."""
        if strict and not self.ok:
            raise UnhealthyRunError(f"--strict: {where} failed its health checks ({'; '.join(self.problems())}); "
                                    "the run folder was written")


def chance(num_classes: int) -> float:
    return 1.0 / max(num_classes, 1)


def _loss_check(history: Sequence[dict[str, Any]], num_classes: int) -> dict[str, Any] | None:
    losses = [r["train_task_loss"] for r in history if "train_task_loss" in r]
    if len(losses) < 2:  # one epoch has nothing to compare with
        return None
    first, last = float(losses[0]), float(losses[-1])
    low = LOW_LOSS_SHARE * math.log(max(num_classes, 2))
    ok = math.isfinite(last) and (last < LOSS_DROP * first or last < low)
    return {"ok": ok, "first_loss": first, "last_loss": last, "low_loss": low,
            "detail": f"training loss {first:.3f} -> {last:.3f} (wanted below {LOSS_DROP:g}x the first "
                      f"or below {low:.3f})"}


def _chance_check(accuracy: float | None, accuracy_name: str, train_accuracy: float | None,
                  num_classes: int) -> dict[str, Any] | None:
    floor = CHANCE_FACTOR * chance(num_classes)
    figures = {name: value for name, value in ((accuracy_name, accuracy), ("train", train_accuracy))
               if value is not None and math.isfinite(value)}
    if not figures:
        return None
    ok = all(value >= floor for value in figures.values())
    shown = ", ".join(f"{name} {100 * value:.1f}%" for name, value in figures.items())
    return {"ok": ok, "floor": floor, "chance": chance(num_classes),
            **{f"{name}_accuracy": value for name, value in figures.items()},
            "detail": f"{shown} against chance {100 * chance(num_classes):.1f}% (floor {100 * floor:.1f}%)"}


@torch.no_grad()
def top_level_shares(model: nn.Module) -> dict[str, float]:
    """Per weight-quantized layer: the share of its finite weights on its most common quantized value."""
    shares = {}
    for name, layer in quantized_layers(model).items():
        if layer.weight_quantizer is None:
            continue
        values = layer.effective_weight().detach().flatten()
        values = values[torch.isfinite(values)]
        if values.numel():
            counts = torch.unique(values, return_counts=True)[1]
            shares[name] = float(counts.max()) / values.numel()
    return shares


def _levels_check(model: nn.Module) -> dict[str, Any] | None:
    shares = top_level_shares(model)
    if not shares:
        return None
    collapsed = {name: share for name, share in shares.items() if share >= ONE_LEVEL_SHARE}
    detail = ("; ".join(f"{100 * s:.1f}% of {n!r}'s weights on one level" for n, s in collapsed.items())
              or f"at most {100 * max(shares.values()):.1f}% of a layer's weights on one level")
    return {"ok": not collapsed, "top_level_share": shares, "collapsed_layers": sorted(collapsed),
            "detail": detail}


def check_health(model: nn.Module | None, history: Sequence[dict[str, Any]], num_classes: int, *,
                 accuracy: float | None, accuracy_name: str = "test") -> Health:
    """Run every check that has its figures (a check with none is left out)."""
    train_accuracy = history[-1].get("train_acc") if history else None
    checks = {"learning": _loss_check(history, num_classes),
              "above_chance": _chance_check(accuracy, accuracy_name, train_accuracy, num_classes),
              "levels": _levels_check(model) if model is not None else None}
    return Health({name: check for name, check in checks.items() if check is not None})


class HealthWatch:
    """Per-epoch watch (``fit(watch=...)``): once a quarter of the epochs (at least 2) are done, warn
    a single time if training accuracy is still at chance and the loss has not fallen."""

    def __init__(self, num_classes: int, epochs: int, reporter: Reporter, what: str = "training") -> None:
        self.num_classes, self.reporter, self.what = num_classes, reporter, what
        self.after = max(2, math.ceil(0.25 * epochs))
        self.history: list[dict[str, Any]] = []
        self.warned = False

    def __call__(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.warned or len(self.history) < self.after:
            return
        health = check_health(None, self.history, self.num_classes, accuracy=None)
        if {"learning", "above_chance"} <= set(health.failed):
            self.warned = True
            self.reporter.warn(f"{self.what} is not learning after {len(self.history)} epochs "
                               f"({health.checks['above_chance']['detail']}; "
                               f"{health.checks['learning']['detail']}); {HINTS['learning']}")
