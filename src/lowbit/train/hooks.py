"""``MethodHooks``: how a method changes plain training (a name suffix, loss terms, epoch
callbacks, extra result fields, config entries, and what to do to the model just before and
just after ``fit``). Hooks combine, so ``lowbit train`` adds its own (grid distance, SinReQ) to
a caller's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lowbit.train.terms import LossTerm


@dataclass
class MethodHooks:
    suffix: str = ""
    loss_terms: Callable[[nn.Module], Sequence[LossTerm]] = lambda model: ()
    callbacks: Sequence[Callable[[int, nn.Module], dict[str, Any]]] = ()
    result_fields: Callable[[nn.Module], dict[str, Any]] = lambda model: {}
    config: dict[str, Any] = field(default_factory=dict)
    before_fit: Callable[[nn.Module], None] = lambda model: None
    after_fit: Callable[[nn.Module], None] = lambda model: None

    def combine(self, other: MethodHooks) -> MethodHooks:
        """Both hooks: ``self``'s terms, callbacks and fields first, ``other``'s after (they win on clashes)."""
        return MethodHooks(
            suffix=self.suffix + other.suffix,
            loss_terms=lambda model: [*self.loss_terms(model), *other.loss_terms(model)],
            callbacks=[*self.callbacks, *other.callbacks],
            result_fields=lambda model: {**self.result_fields(model), **other.result_fields(model)},
            config={**self.config, **other.config},
            before_fit=_in_turn(self.before_fit, other.before_fit),
            after_fit=_in_turn(self.after_fit, other.after_fit),
        )


def _in_turn(*actions: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    def run_all(model: nn.Module) -> None:
        for action in actions:
            action(model)

    return run_all
