"""The terminal reward of ReLeQ (Elthakeb et al.), METHODS.md section 5.

With ``y = acc / acc_float`` (accuracy relative to the float model) and
``x = quant_state - b_min / b_max`` (how far the bits are above the lowest possible state)::

    R = -1                                   if y < th
    R = 2 * ((1 - x^a) * y^(b / y) - 0.5)    otherwise

Defaults ``th = 0.4, a = 0.8, b = 1``. Decisions at the edges:

- ``acc_float <= 0`` (or not finite) raises ``ConfigError``: there is no reference to divide by.
- ``acc`` must be a finite number >= 0; ``y > 1`` (quantized better than float) is allowed and
  gives ``R > 2 * (1 - x^a) - 1``.
- ``x < 0`` cannot happen when ``quant_state`` is computed from bits >= ``b_min``; a shortfall of
  at most ``1e-9`` (float rounding) is clipped to 0, a larger one raises ``ConfigError``.
- ``y = 0`` with ``th = 0``: ``y^(b/y)`` is taken at its limit 0, so ``R = -1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lowbit.errors import ConfigError
from lowbit.search.limits import CostBudget
from lowbit.search.space import ChoiceLike, SearchSpace

X_TOLERANCE = 1e-9


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RewardConfig:
    """ReLeQ reward parameters: accuracy threshold ``th``, bits exponent ``a``, accuracy exponent ``b``."""

    th: float = 0.4
    a: float = 0.8
    b: float = 1.0

    def __post_init__(self) -> None:
        th, a, b = _finite("reward th", self.th), _finite("reward a", self.a), _finite("reward b", self.b)
        if not 0.0 <= th <= 1.0:
            raise ConfigError(f"reward th is a fraction of the float accuracy in [0, 1], got {th}")
        if not a > 0:
            raise ConfigError(f"reward a (the exponent on the bits state) must be > 0, got {a}")
        if not b > 0:
            raise ConfigError(f"reward b (the exponent on the accuracy state) must be > 0, got {b}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def releq_reward(acc: float, acc_float: float, quant_state: float, b_min: float, b_max: float,
                 cfg: RewardConfig = RewardConfig()) -> float:
    """The ReLeQ terminal reward (module docstring)."""
    acc, acc_float = _finite("accuracy", acc), _finite("float accuracy", acc_float)
    quant_state, b_min, b_max = _finite("quant_state", quant_state), _finite("b_min", b_min), _finite("b_max", b_max)
    if acc_float <= 0:
        raise ConfigError(f"the float accuracy must be > 0 to compute the ReLeQ reward, got {acc_float}")
    if acc < 0:
        raise ConfigError(f"accuracy must be >= 0, got {acc}")
    if not 0 < b_min <= b_max:
        raise ConfigError(f"need 0 < b_min <= b_max, got b_min={b_min}, b_max={b_max}")
    y = acc / acc_float
    x = quant_state - b_min / b_max
    if x < 0:
        if x < -X_TOLERANCE:
            raise ConfigError(f"quant_state {quant_state} is below its minimum b_min/b_max = {b_min / b_max}")
        x = 0.0
    if y < cfg.th:
        return -1.0
    acc_term = 0.0 if y == 0 else y ** (cfg.b / y)
    return 2.0 * ((1.0 - x ** cfg.a) * acc_term - 0.5)


def reward_state(space: SearchSpace, choices: Sequence[ChoiceLike], weighted: bool = False,
                 cost_budget: CostBudget | None = None) -> float:
    """The reward's bits term for a plan: ``quant_state`` (``Σ bits / (b_max L)``), or under a cost
    budget the plan's cost in the budget's unit on the same scale,
    ``b_min/b_max + (1 - b_min/b_max) (C - C_min) / (C_max - C_min)``, so that the reward and the
    constraint measure one thing (bits, bytes or BOPs; the cheapest plan scores like all-b_min bits)."""
    choices = space.normalize(choices)
    if cost_budget is None:
        return space.quant_state(choices, weighted=weighted)
    floor = space.b_min / space.b_max
    least, most = cost_budget.costs.minimum(cost_budget.kind), cost_budget.costs.maximum(cost_budget.kind)
    share = (cost_budget.cost(choices) - least) / (most - least) if most > least else 0.0
    return floor + (1.0 - floor) * min(max(share, 0.0), 1.0)


def plan_reward(space: SearchSpace, choices: Sequence[ChoiceLike], acc: float, acc_float: float,
                cfg: RewardConfig = RewardConfig(), weighted: bool = False,
                cost_budget: CostBudget | None = None) -> float:
    """:func:`releq_reward` of a plan of ``space`` (the same reward for every strategy; under a cost
    budget its bits term is the plan's cost, :func:`reward_state`)."""
    state = reward_state(space, choices, weighted, cost_budget)
    return releq_reward(acc, acc_float, state, space.b_min, space.b_max, cfg)
