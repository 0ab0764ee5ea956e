"""The search space of a per-layer bitwidth search: ReLeQ (Elthakeb et al.), METHODS.md section 5.

A :class:`SearchSpace` lists a model's quantizable layers in order, says which ones the search
picks bits for, and turns the search's choices into a :class:`~lowbit.plan.Plan`.

- Searched layers: every quantizable layer, except the first and the last when
  ``pin_first_last`` (they stay at ``pin_bits``, default 8, as ``lowbit.plan``'s pin does).
- Choices: one ``(w_bits, a_bits)`` pair per searched layer, in layer order. Weights-only search
  (the default) fixes every activation at ``act_bits`` (default 32 = float; the pinned layers
  too); a weight+activation search picks both, one joint ``Discrete`` action per layer:
  ``action = i_w * len(act_choices) + i_a`` (:meth:`SearchSpace.decode`).
- The first layer's input is the network input, so its activation bits stay 32 whatever the
  choice says (as ``lowbit.plan``'s pin); :meth:`SearchSpace.normalize` writes that in, so two
  actions that differ only there give the same plan and the same :meth:`SearchSpace.key`.
- ``quant_state`` (the ``Σ bits / (b_max L)`` of section 5) averages the bits the search picks,
  over the searched layers only (pinned layers are constant): weights-only ``Σ_i w_i / (b_max L)``;
  weight+activation search averages the weight and the searched activation fields together.
  ``weighted=True`` weights each layer by its parameter count. Its minimum is ``b_min / b_max``,
  reached with every searched field at ``b_min``, so the reward's ``x = quant_state - b_min/b_max``
  lies in ``[0, 1 - b_min/b_max]``. ``b_min``/``b_max`` are the extremes of the choices (weight
  and activation choices together when both are searched).
- ``avg_bits`` / ``weighted_bits`` are ``lowbit.costs``' metrics over ALL quantized layers,
  pinned ones included (the papers' average bits).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
from torch import nn

from lowbit.costs import costs_of
from lowbit.errors import ConfigError
from lowbit.nn.convert import quantizable_layers
from lowbit.plan import PIN_BITS, LayerBits, Plan, PlanEntry, pinned_layers
from lowbit.quant.bits import FLOAT_BITS, LOW_BITS, check_bits

Bits = tuple[int, int]  # (weight bits, activation bits) of one layer
Choices = tuple[Bits, ...]  # one pair per searched layer, in layer order
ChoiceLike = Union[int, Sequence[int]]  # an int means weight bits (activations fixed)


@dataclass(frozen=True)
class LayerInfo:
    """What the search knows about one quantizable layer (the observation's raw features)."""

    name: str
    kind: str  # "conv1d", "conv2d" or "linear"
    out_channels: int
    in_channels: int
    kernel_size: int  # product of the kernel dims; 0 for Linear
    weight_std: float  # population std of the float weights
    params: int  # weight elements
    searched: bool


def describe_layer(name: str, module: nn.Module, searched: bool) -> LayerInfo:
    """The :class:`LayerInfo` of one Conv1d/Conv2d/Linear layer (float or quantized)."""
    weight = module.weight.detach().float()
    std = float(weight.std(correction=0)) if weight.numel() else 0.0
    if isinstance(module, nn.Linear):
        return LayerInfo(name, "linear", module.out_features, module.in_features, 0, std, weight.numel(), searched)
    kind = "conv1d" if isinstance(module, nn.Conv1d) else "conv2d"
    return LayerInfo(name, kind, module.out_channels, module.in_channels, math.prod(module.kernel_size), std,
                     weight.numel(), searched)


def _check_choices(values: Sequence[int] | None, what: str) -> tuple[int, ...]:
    if values is None or len(tuple(values)) == 0:
        raise ConfigError(f"{what} must list at least one bitwidth, e.g. (2, 3, 4, 5, 8)")
    checked = [check_bits(v, allowed=LOW_BITS, what=what.rstrip("s")) for v in values]
    duplicates = sorted({b for b in checked if checked.count(b) > 1})
    if duplicates:
        raise ConfigError(f"{what} lists {', '.join(map(str, duplicates))} more than once: {tuple(checked)}")
    return tuple(sorted(checked))


class SearchSpace:
    """Layers, bit choices, pins, and the mapping from actions/choices to plans (module docstring)."""

    def __init__(self, layers: Sequence[LayerInfo], bit_choices: Sequence[int] = (2, 3, 4, 5, 8), *,
                 act_choices: Sequence[int] | None = None, pin_first_last: bool = True, pin_bits: int = PIN_BITS,
                 act_bits: int = FLOAT_BITS) -> None:
        self.layers: tuple[LayerInfo, ...] = tuple(layers)
        if not self.layers:
            raise ConfigError("the model has no quantizable layer (Conv1d, Conv2d or Linear) to search")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ConfigError(f"layer names must be unique, got {names}")
        self.bit_choices = _check_choices(bit_choices, "bit_choices")
        self.act_choices = None if act_choices is None else _check_choices(act_choices, "act_choices")
        self.pin_first_last = bool(pin_first_last)
        self.pin_bits = check_bits(pin_bits, allowed=LOW_BITS, what="pin bitwidth")
        self.act_bits = check_bits(act_bits, what="fixed activation bitwidth")
        pinned = pinned_layers([layer.name for layer in self.layers], self.pin_first_last)
        expected = [layer.name not in pinned for layer in self.layers]
        if [layer.searched for layer in self.layers] != expected:
            raise ConfigError("LayerInfo.searched must be False exactly for the pinned first and last layers "
                              f"(pin_first_last={self.pin_first_last}); SearchSpace.from_model sets it")
        self.searched_names: tuple[str, ...] = tuple(layer.name for layer in self.layers if layer.searched)
        if not self.searched_names:
            hint = " (pin_first_last=False searches them too)" if self.pin_first_last else ""
            raise ConfigError(f"no layer left to search: the model's {len(self.layers)} quantizable layer(s) "
                              f"are all pinned{hint}")
        self._index = {name: i for i, name in enumerate(names)}
        self._counts = {layer.name: layer.params for layer in self.layers}
        bits = self.bit_choices + (self.act_choices or ())
        self.b_min, self.b_max = min(bits), max(bits)

    @classmethod
    def from_model(cls, model: nn.Module, bit_choices: Sequence[int] = (2, 3, 4, 5, 8), pin_first_last: bool = True,
                   search_acts: bool = False, act_choices: Sequence[int] | None = None, *, pin_bits: int = PIN_BITS,
                   act_bits: int = FLOAT_BITS) -> SearchSpace:
        """The space of ``model``'s quantizable layers (``act_choices`` defaults to ``bit_choices``)."""
        if act_choices is not None and not search_acts:
            raise ConfigError("act_choices given but search_acts=False; pass search_acts=True to search "
                              "activation bits, or act_bits=... to fix them")
        modules = quantizable_layers(model)
        pinned = pinned_layers(list(modules), pin_first_last)
        layers = [describe_layer(name, m, name not in pinned) for name, m in modules.items()]
        acts = (tuple(bit_choices) if act_choices is None else act_choices) if search_acts else None
        return cls(layers, bit_choices, act_choices=acts, pin_first_last=pin_first_last, pin_bits=pin_bits,
                   act_bits=act_bits)

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def search_acts(self) -> bool:
        return self.act_choices is not None

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def searched_layers(self) -> tuple[LayerInfo, ...]:
        return tuple(layer for layer in self.layers if layer.searched)

    @property
    def n_searched(self) -> int:
        """L: how many layers the search visits."""
        return len(self.searched_names)

    @property
    def n_actions(self) -> int:
        return len(self.bit_choices) * (len(self.act_choices) if self.act_choices else 1)

    def act_searched(self, name: str) -> bool:
        """Whether the search picks this layer's activation bits (never for the network input)."""
        return self.search_acts and name in self.searched_names and self._index[name] != 0

    @property
    def n_plans(self) -> int:
        """How many distinct plans the space holds."""
        total = 1
        for name in self.searched_names:
            total *= len(self.bit_choices) * (len(self.act_choices) if self.act_searched(name) else 1)
        return total

    @property
    def pin(self) -> LayerBits:
        """Bits of the pinned layers (the first layer's activations stay 32 regardless)."""
        return LayerBits(self.pin_bits, self.pin_bits if self.search_acts else self.act_bits)

    # ---- actions and choices ----------------------------------------------------------------
    def decode(self, action: int) -> Bits:
        """A Discrete action -> ``(w_bits, a_bits)``."""
        index = int(np.asarray(action).reshape(-1)[0]) if np.ndim(action) else int(action)
        if not 0 <= index < self.n_actions:
            raise ConfigError(f"action {action!r} is outside 0..{self.n_actions - 1}")
        if self.act_choices is None:
            return self.bit_choices[index], self.act_bits
        w, a = divmod(index, len(self.act_choices))
        return self.bit_choices[w], self.act_choices[a]

    def encode(self, bits: ChoiceLike) -> int:
        """``(w_bits, a_bits)`` (or weight bits) -> its Discrete action."""
        w, a = self._pair(bits, None)
        if w not in self.bit_choices:
            raise ConfigError(f"weight bits {w} are not one of the choices {self.bit_choices}")
        if self.act_choices is None:
            return self.bit_choices.index(w)
        if a not in self.act_choices:
            raise ConfigError(f"activation bits {a} are not one of the choices {self.act_choices}")
        return self.bit_choices.index(w) * len(self.act_choices) + self.act_choices.index(a)

    def _pair(self, value: ChoiceLike, name: str | None) -> Bits:
        if isinstance(value, (str, bytes)):
            raise ConfigError(f"a choice must be bits or a (weight, act) pair, got {value!r}")
        if isinstance(value, Sequence) or isinstance(value, np.ndarray):
            if len(value) != 2:
                raise ConfigError(f"a choice must be a (weight, act) pair, got {value!r}")
            w, a = check_bits(value[0], name), check_bits(value[1], name)
        elif self.search_acts:
            raise ConfigError(f"this space searches activation bits too: give a (weight, act) pair, got {value!r}")
        else:
            w, a = check_bits(value, name), self.act_bits
        return w, a

    def normalize(self, choices: Sequence[ChoiceLike]) -> Choices:
        """Validated canonical choices: one ``(w, a)`` per searched layer, first layer's act at 32."""
        if isinstance(choices, (str, bytes)) or len(choices) != self.n_searched:
            raise ConfigError(f"expected {self.n_searched} choices (one per searched layer: "
                              f"{', '.join(self.searched_names)}), got {choices!r}")
        out = []
        for name, value in zip(self.searched_names, choices):
            w, a = self._pair(value, name)
            if w not in self.bit_choices:
                raise ConfigError(f"layer {name!r}: weight bits {w} are not one of the choices {self.bit_choices}")
            if self._index[name] == 0:
                a = FLOAT_BITS
            elif self.act_choices is None:
                if a != self.act_bits:
                    raise ConfigError(f"layer {name!r}: activation bits are fixed at {self.act_bits} "
                                      f"(search_acts=False), got {a}")
            elif a not in self.act_choices:
                raise ConfigError(f"layer {name!r}: activation bits {a} are not one of the choices {self.act_choices}")
            out.append((w, a))
        return tuple(out)

    def uniform(self, bits: int | None = None, act: int | None = None) -> Choices:
        """Every searched layer at the same bits (default: the largest choices)."""
        w = self.bit_choices[-1] if bits is None else bits
        a = (self.act_choices[-1] if self.search_acts else self.act_bits) if act is None else act
        return self.normalize([(w, a)] * self.n_searched)

    # ---- plans and costs --------------------------------------------------------------------
    def resolved(self, choices: Sequence[ChoiceLike]) -> OrderedDict[str, LayerBits]:
        """Bits of every quantizable layer (pinned ones included), in order: :meth:`to_plan` resolved,
        so the plan a search writes and the one it evaluates are the same encoding."""
        return OrderedDict(self.to_plan(choices).resolve(self.layer_names))

    def to_plan(self, choices: Sequence[ChoiceLike]) -> Plan:
        """A plan with one exact entry per searched layer and the first/last pin for the others."""
        entries = tuple(PlanEntry(name, w, a) for name, (w, a) in zip(self.searched_names, self.normalize(choices)))
        return Plan(default=LayerBits(FLOAT_BITS, FLOAT_BITS),
                    first_last=self.pin if self.pin_first_last else None, entries=entries)

    def key(self, choices: Sequence[ChoiceLike]) -> str:
        """Canonical key (hashable, JSON-able): ``"w/a"`` of every layer, comma-separated, e.g. ``"8/32,4/32,8/32"``."""
        return ",".join(f"{b.weight}/{b.act}" for b in self.resolved(choices).values())

    def choices_from_key(self, key: str) -> Choices:
        """Inverse of :meth:`key`."""
        try:
            pairs = [tuple(int(v) for v in item.split("/")) for item in key.split(",")]
        except (AttributeError, ValueError):
            raise ConfigError(f"not a plan key: {key!r}") from None
        if len(pairs) != len(self.layers) or any(len(p) != 2 for p in pairs):
            raise ConfigError(f"plan key {key!r} does not describe this space's {len(self.layers)} layers")
        choices = self.normalize([pairs[self._index[name]] for name in self.searched_names])
        if self.key(choices) != key:
            raise ConfigError(f"plan key {key!r} does not match this space's pins")
        return choices

    def avg_bits(self, choices: Sequence[ChoiceLike]) -> float:
        """Mean weight bits over all quantized layers (``lowbit.costs``)."""
        return costs_of(self._counts, self.resolved(choices)).avg_bits

    def weighted_bits(self, choices: Sequence[ChoiceLike]) -> float:
        """Weight bits averaged over all weights, by parameter count (``lowbit.costs``)."""
        return costs_of(self._counts, self.resolved(choices)).weighted_bits

    def quant_state(self, bits: Sequence[Bits], weighted: bool = False) -> float:
        """``Σ bits / (b_max L)`` over the searched fields (module docstring).

        ``bits`` holds one ``(w, a)`` per searched layer and may hold bits outside the choices
        (the environment's starting 8 bits), so it is not validated against them.
        """
        if len(bits) != self.n_searched:
            raise ConfigError(f"expected bits for {self.n_searched} searched layers, got {len(bits)}")
        total = norm = 0.0
        for name, (w, a) in zip(self.searched_names, bits):
            n = float(self._counts[name]) if weighted else 1.0
            total += n * w
            norm += n
            if self.act_searched(name):
                total += n * a
                norm += n
        return total / (self.b_max * norm)

    def to_dict(self) -> dict[str, object]:
        """A JSON-able description (what a run folder records)."""
        return {"layers": list(self.layer_names), "searched": list(self.searched_names),
                "bit_choices": list(self.bit_choices),
                "act_choices": None if self.act_choices is None else list(self.act_choices),
                "pin_first_last": self.pin_first_last, "pin_bits": self.pin_bits, "act_bits": self.act_bits}
