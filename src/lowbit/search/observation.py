"""What ReLeQ's agent sees at each decision step (issue 19, part 4; METHODS.md section 5).

Two observations of the bitwidth environment (:class:`lowbit.search.env.BitwidthEnv`):

``"paper"`` (8 features, Elthakeb et al.'s state as METHODS.md gives it): layer index, the layer's
current bits, quant_state, acc_state, out/in channels, kernel size, weight std. Two of them carry
nothing inside an episode: the current bits are always the start bits when a layer is visited, and
acc_state is reset to 1.0 every episode (the accuracy is measured only at its end).

``"informative"`` (the default, 10 features), at the step that picks layer ``i`` of ``L``:

    0  i / L
    1  sensitivity: log Ω(i, b_min) = log(½ tr(H_i)/n_i ||Q_bmin(W_i) - W_i||²), min-max normalised
       over the searched layers (``lowbit.search.sensitivity``; what HAWQ minimises)
    2  curvature: log(tr(H_i)/n_i), min-max normalised the same way
    3  bits chosen for the previous layer / b_max      (0 at the first step)
    4  mean bits chosen so far / b_max                 (0 at the first step)
    5  budget used: the cost of the bits chosen so far with every later layer at its cheapest,
       over the cost budget (clipped to [0, 2]); without a budget, that plan's quant_state
    6  the layer's share of the searched layers' weights
    7  out-channels  \\
    8  in-channels    > min-max normalised over the model's quantizable layers (as the paper's)
    9  kernel size   /

"bits" of a layer is its weight bits, averaged with its activation bits when those are searched.
After the last step the observation has index 1, the final bits and budget features, and zeros
for the layer's own features. Curvature floors: a Hutchinson trace <= 0 (noise on a flat layer)
is floored at 1e-12 times the largest before the log.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lowbit.errors import ConfigError
from lowbit.search.limits import CostBudget, layer_options
from lowbit.search.sensitivity import Sensitivity
from lowbit.search.space import Bits, SearchSpace

STATES = ("informative", "paper")
DEFAULT_STATE = "informative"
N_PAPER = 8
N_INFORMATIVE = 10
BUDGET_USED_MAX = 2.0


def minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def check_state(state: str, sensitivity: Sensitivity | None, space: SearchSpace) -> str:
    if state not in STATES:
        raise ConfigError(f"unknown ReLeQ state {state!r}; choose one of {', '.join(STATES)}")
    if state == "informative":
        if sensitivity is None:
            raise ConfigError("ReLeQ's informative state needs the layers' sensitivity "
                              "(lowbit.search.sensitivity.layer_sensitivity); or use state='paper'")
        missing = [n for n in space.searched_names if n not in sensitivity.layers]
        if missing:
            raise ConfigError(f"the sensitivity has no entry for searched layers {missing}; "
                              "it was measured on another model or space")
    return state


def sensitivity_features(space: SearchSpace, sensitivity: Sensitivity) -> np.ndarray:
    """(L, 2): normalised log Ω at the fewest bits and log curvature per parameter, per searched layer."""
    b_min = min(space.bit_choices)
    layers = [sensitivity.layers[n] for n in space.searched_names]
    curvature = np.array([max(layer.trace, 0.0) / layer.params for layer in layers])
    floor = 1e-12 * max(float(curvature.max()), 1e-30)
    curvature = np.maximum(curvature, floor)
    perturbation = np.array([max(layer.perturbation[b_min], 1e-30) for layer in layers])
    omega = 0.5 * curvature * perturbation
    return np.stack([minmax(np.log(omega)), minmax(np.log(curvature))], axis=1)


class ProgressFeatures:
    """Features 3-5: the bits chosen so far and the budget they already use (module docstring)."""

    def __init__(self, space: SearchSpace, cost_budget: CostBudget | None) -> None:
        self.space, self.cost_budget = space, cost_budget
        acts = space.act_choices if space.search_acts and space.act_choices else (space.act_bits,)
        self._fewest: list[Bits] = [(min(space.bit_choices), min(acts))] * space.n_searched
        if cost_budget is not None:
            kind, costs = cost_budget.kind, cost_budget.costs
            self._fewest = [min(layer_options(space, name), key=lambda o, n=name: costs.share(kind, n, o))
                            for name in space.searched_names]

    def _bits(self, index: int, pair: Bits) -> float:
        w, a = pair
        name = self.space.searched_names[index]
        return (w + a) / 2 if self.space.act_searched(name) else float(w)

    def __call__(self, chosen: Sequence[Bits]) -> np.ndarray:
        b_max = self.space.b_max
        bits = [self._bits(i, pair) for i, pair in enumerate(chosen)]
        previous = bits[-1] / b_max if bits else 0.0
        mean = float(np.mean(bits)) / b_max if bits else 0.0
        cheapest = list(chosen) + self._fewest[len(chosen):]
        if self.cost_budget is None:
            used = self.space.quant_state(cheapest)
        else:
            used = min(self.cost_budget.cost(cheapest) / self.cost_budget.value, BUDGET_USED_MAX)
        return np.array([previous, mean, used])


def shape_features(space: SearchSpace) -> np.ndarray:
    """(L, 4): out/in channels and kernel size min-max normalised over all quantizable layers, and
    the weight std, for the searched layers (the paper's layer features)."""
    layers = space.layers
    searched = [i for i, layer in enumerate(layers) if layer.searched]
    table = np.stack([minmax(np.array([float(getattr(layer, f)) for layer in layers]))
                      for f in ("out_channels", "in_channels", "kernel_size")], axis=1)
    stds = np.array([layer.weight_std for layer in layers])
    return np.concatenate([table, stds[:, None]], axis=1)[searched]


def param_shares(space: SearchSpace) -> np.ndarray:
    counts = np.array([float(layer.params) for layer in space.layers if layer.searched])
    return counts / counts.sum()
