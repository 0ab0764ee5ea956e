"""The cost budget of a bitwidth search: "the best plan under B" (issue 19, part 5), shared by every
strategy (ReLeQ, METHODS.md section 5, its comparators, HAWQ and TPE).

A :class:`CostBudget` caps one cost of a plan, in the same units as ``lowbit.costs`` reports it:

- ``bits``: average weight bits over the quantized layers, searched and pinned (``avg_bits`` of
  ``lowbit.costs`` and of the search records);
- ``bytes``: the packed model size (``model_costs(model).size_bytes`` of the quantized model:
  every weight tensor packed at its bits plus one float32 scale, every other parameter and
  floating-point buffer, the activation quantizers' included, as float32);
- ``bops``: bit-operations per sample, ``Σ MACs_l * w_l * a_l`` with float counted as 32
  (``compute_costs(...).bops``).

The budget is not the evaluation budget (``lowbit.search.budget``), which counts evaluations.

:class:`SpaceCosts` holds each cost as a constant (the pinned layers, biases, ...) plus one term
per searched layer and choice: all three costs are sums over layers, so the tables are exact and
they are what HAWQ's integer program constrains. ``SpaceCosts.from_model`` measures the tables on
quantized copies of the model (the quantizer family of the search), so ``cost("bytes", c)``
equals ``model_costs`` of the model quantized with plan ``c``; ``SpaceCosts.from_space`` needs no
model (bits; bytes of the weights alone; BOPs when given the MACs) for synthetic tests.

A plan is within the budget when its cost is at most the value (with a relative tolerance of
1e-9 for float rounding). What each strategy does with plans over the budget is in its module:
none of them evaluates one or returns one as its best.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.costs import compute_costs, costs_of, layer_macs, model_costs
from lowbit.errors import ConfigError
from lowbit.nn.convert import quantize_, quantized_layers
from lowbit.quant.registry import QuantizerSpec
from lowbit.search.space import Bits, ChoiceLike, SearchSpace

BUDGET_KINDS = ("bits", "bytes", "bops")
FLOAT_BYTES = 4
TOLERANCE = 1e-9
_FLAGS = {"bits": "--budget-bits", "bytes": "--budget-bytes", "bops": "--budget-bops"}


def layer_options(space: SearchSpace, name: str) -> list[Bits]:
    """The distinct ``(w, a)`` a searched layer can take, in (w, a) order."""
    if space.act_searched(name):
        return [(w, a) for w in space.bit_choices for a in space.act_choices]  # type: ignore[union-attr]
    fixed = space.normalize(space.uniform())[space.searched_names.index(name)][1]
    return [(w, fixed) for w in space.bit_choices]


class SpaceCosts:
    """Additive per-layer tables of a space's plan costs (module docstring).

    ``tables[kind][name][(w, a)]`` is the layer's share and ``constants[kind]`` the rest; a kind
    missing from ``tables`` cannot be measured here (BOPs without MACs)."""

    def __init__(self, space: SearchSpace, tables: Mapping[str, Mapping[str, Mapping[Bits, float]]],
                 constants: Mapping[str, float]) -> None:
        self.space = space
        self.tables = {kind: {name: dict(t) for name, t in per.items()} for kind, per in tables.items()}
        self.constants = dict(constants)

    @classmethod
    def from_space(cls, space: SearchSpace, macs: Mapping[str, int] | None = None) -> SpaceCosts:
        """Bits, the packed size of the weights alone (no other parameter) and, with ``macs``, BOPs."""
        counts = {layer.name: layer.params for layer in space.layers}

        def totals(choices: Sequence[ChoiceLike]) -> dict[str, float]:
            resolved = space.resolved(choices)
            out = {"bits": space.avg_bits(choices), "bytes": float(costs_of(counts, resolved).size_bytes)}
            if macs is not None:
                out["bops"] = float(compute_costs(macs, resolved).bops)
            return out

        return cls._measure(space, totals)

    @classmethod
    def from_model(cls, model: nn.Module, space: SearchSpace, spec: QuantizerSpec | str = "dorefa",
                   sample_input: torch.Tensor | None = None) -> SpaceCosts:
        """Bits, ``model_costs`` bytes and (with ``sample_input``) BOPs of ``model`` quantized per plan.

        Bytes: one quantized copy per option ``(w, a)`` with every searched layer at it; a layer's
        share is what ``model_costs`` counts for it that depends on its bits: its packed weight
        plus one float32 scale, and its quantizers' parameters and floating-point buffers other
        than the weight quantizer's parameters (the scale already counted). The constant is the
        rest of ``model_costs`` (pinned layers, biases, batch norm, ...)."""
        spec = QuantizerSpec(spec) if isinstance(spec, str) else spec
        macs = None if sample_input is None else layer_macs(model, sample_input)

        def totals(choices: Sequence[ChoiceLike]) -> dict[str, float]:
            out = {"bits": space.avg_bits(choices)}
            if macs is not None:
                out["bops"] = float(compute_costs(macs, space.resolved(choices)).bops)
            return out

        costs = cls._measure(space, totals)
        base = copy.deepcopy(model).cpu()
        options = sorted({o for name in space.searched_names for o in layer_options(space, name)})
        shares: dict[str, dict[Bits, float]] = {name: {} for name in space.searched_names}
        constant = None
        for option in options:
            plan = [option if option in layer_options(space, name) else layer_options(space, name)[0]
                    for name in space.searched_names]
            quantized = copy.deepcopy(base)
            quantize_(quantized, space.to_plan(plan), spec)
            layers = quantized_layers(quantized)
            own = {name: float(_layer_bytes(layers[name])) for name in space.searched_names}
            for name, bits in zip(space.searched_names, space.normalize(plan)):
                shares[name][bits] = own[name]
            if constant is None:
                constant = model_costs(quantized).size_bytes - sum(own.values())
        reference = {name: shares[name][layer_options(space, name)[0]] for name in space.searched_names}
        costs.tables["bytes"] = {name: {bits: v - reference[name] for bits, v in per.items()}
                                 for name, per in shares.items()}
        costs.constants["bytes"] = float(constant) + sum(reference.values())  # type: ignore[arg-type]
        return costs

    @classmethod
    def _measure(cls, space: SearchSpace, totals: Any) -> SpaceCosts:
        """Tables by differences from a reference plan (the first option of every layer): the costs
        are sums over layers, so changing one layer changes only its own share."""
        reference = [layer_options(space, name)[0] for name in space.searched_names]
        base = totals(reference)
        tables: dict[str, dict[str, dict[Bits, float]]] = {kind: {} for kind in base}
        for i, name in enumerate(space.searched_names):
            for kind in base:
                tables[kind][name] = {}
            for option in layer_options(space, name):
                plan = list(reference)
                plan[i] = option
                cost = base if option == reference[i] else totals(plan)
                for kind in base:  # bits: multiples of 1/layers, rounded off the float noise of the difference
                    share = cost[kind] - base[kind]
                    tables[kind][name][option] = round(share, 12) if kind == "bits" else share
        # the reference plan's layer shares are 0 and its total is the constant
        return cls(space, tables, base)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in BUDGET_KINDS if k in self.tables)

    def _check_kind(self, kind: str) -> None:
        if kind not in BUDGET_KINDS:
            raise ConfigError(f"unknown cost {kind!r}; choose one of {', '.join(BUDGET_KINDS)}")
        if kind not in self.tables:
            raise ConfigError(f"the {kind} of a plan cannot be computed here: BOPs need the layers' MACs "
                              "(SpaceCosts.from_model with a sample input, or from_space(macs=...))")

    def cost(self, kind: str, choices: Sequence[ChoiceLike]) -> float:
        self._check_kind(kind)
        plan = self.space.normalize(choices)
        return self.constants[kind] + sum(self.tables[kind][name][bits]
                                          for name, bits in zip(self.space.searched_names, plan))

    def share(self, kind: str, name: str, bits: Bits) -> float:
        """One searched layer's share of the cost at ``bits`` (relative to its first option)."""
        self._check_kind(kind)
        return self.tables[kind][name][bits]

    def minimum(self, kind: str) -> float:
        """The least cost any plan of the space has."""
        self._check_kind(kind)
        return self.constants[kind] + sum(min(t.values()) for t in self.tables[kind].values())

    def maximum(self, kind: str) -> float:
        self._check_kind(kind)
        return self.constants[kind] + sum(max(t.values()) for t in self.tables[kind].values())


@dataclass(frozen=True)
class CostBudget:
    """A cap on one plan cost (module docstring), with the tables to compute it."""

    kind: str
    value: float
    costs: SpaceCosts

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ConfigError(f"unknown cost budget {self.kind!r}; choose one of {', '.join(BUDGET_KINDS)}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value) \
                or not self.value > 0:
            raise ConfigError(f"{_FLAGS[self.kind]} must be a finite number > 0, got {self.value!r}")
        self.costs._check_kind(self.kind)

    @property
    def space(self) -> SearchSpace:
        return self.costs.space

    def cost(self, choices: Sequence[ChoiceLike]) -> float:
        return self.costs.cost(self.kind, choices)

    def allows(self, choices: Sequence[ChoiceLike]) -> bool:
        return self.cost(choices) <= self.value * (1 + TOLERANCE)

    def check_feasible(self) -> None:
        """``ConfigError`` when not even the cheapest plan of the space is within the budget."""
        least = self.costs.minimum(self.kind)
        if least > self.value * (1 + TOLERANCE):
            raise ConfigError(f"{_FLAGS[self.kind]} {self.value:g}: no plan of the space is within it (the cheapest, "
                              f"every searched field at its fewest bits, costs {least:,.6g} {self.kind})")

    def largest_uniform(self) -> tuple[Bits, ...]:
        """The plan with every searched layer at the same bits, the most bits within the budget
        (weights first, then activations): greedy descent's start."""
        space = self.space
        acts = space.act_choices if space.search_acts else (space.act_bits,)
        for w, a in sorted(itertools.product(space.bit_choices, acts), reverse=True):  # type: ignore[arg-type]
            plan = space.uniform(w, a)
            if self.allows(plan):
                return plan
        self.check_feasible()
        raise ConfigError(f"{_FLAGS[self.kind]} {self.value:g}: no uniform plan of the space is within it")

    def count_within(self, cap: int = 200_000) -> int | None:
        """How many plans of the space are within the budget, or None when counting them would hold
        more than ``cap`` distinct partial costs (counted by dynamic programming over the layers)."""
        counts: dict[float, int] = {0.0: 1}
        slack = self.value * (1 + TOLERANCE) - self.costs.constants[self.kind]
        for name in self.space.searched_names:
            nxt: dict[float, int] = {}
            for total, n in counts.items():
                for share in self.costs.tables[self.kind][name].values():
                    key = total + share
                    nxt[key] = nxt.get(key, 0) + n
            counts = nxt
            if len(counts) > cap:
                return None
        return sum(n for total, n in counts.items() if total <= slack)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "least": self.costs.minimum(self.kind),
                "most": self.costs.maximum(self.kind)}


def _layer_bytes(layer: nn.Module) -> int:
    """The bytes ``model_costs`` counts for one quantized layer that depend on its bits (SpaceCosts.from_model)."""
    wq, aq = getattr(layer, "weight_quantizer", None), getattr(layer, "input_quantizer", None)
    n, w = layer.weight.numel(), getattr(layer, "weight_bits", 32)
    total = math.ceil(n * w / 8) + FLOAT_BYTES if wq is not None else FLOAT_BYTES * n
    for quantizer in (wq, aq):
        if quantizer is None:
            continue
        if quantizer is aq:
            total += FLOAT_BYTES * sum(p.numel() for p in quantizer.parameters())
        total += FLOAT_BYTES * sum(b.numel() for b in quantizer.buffers() if b.is_floating_point())
    return total
