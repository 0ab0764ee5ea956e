"""The bitwidth environment of ReLeQ (Elthakeb et al.), METHODS.md section 5, as a gymnasium ``Env``.

An episode starts with every searched layer at ``start_bits`` (8) and visits the searched layers in
order; each step's ``Discrete(space.n_actions)`` action sets that layer's bits
(:meth:`SearchSpace.decode`). The reward is 0 until the last layer, then the terminal reward
``releq_reward(acc, acc_float, quant_state, b_min, b_max)`` of the finished plan, whose accuracy
comes from the evaluator (a :class:`CachedEvaluator`, so a plan is trained once).

Observation: ``state="informative"`` (the default; 10 features: the layer's sensitivity, the bits
chosen so far and the budget they use, ``lowbit.search.observation``) or ``state="paper"``, the
paper's 8 features (float32) at the step that picks layer ``i`` of ``L`` searched layers:

    0  i / L
    1  current bits of layer i / b_max      (its weight bits; still start_bits when it is visited)
    2  quant_state = Σ bits / (b_max L)      (chosen bits so far, start_bits for the rest;
                                              ``weighted_state=True`` weights layers by parameters)
    3  acc_state = last accuracy / acc_float (1.0 until the episode's plan has been evaluated)
    4  out-channels   \\
    5  in-channels     > min-max normalised over all of the model's quantizable layers
    6  kernel size    /  (kernel size 0 for Linear; 0 when all layers are equal)
    7  std of the layer's float weights

The paper's observation after the last step has index 1, bits 0 and features 0, with the final
quant_state and acc_state. Accuracy is measured only at the episode's end (METHODS: reward 0
until the last layer), so acc_state starts each episode at 1.0: the environment is a
deterministic function of the actions, and ``reset(seed=...)`` only seeds ``np_random`` (which
the environment itself does not draw from). ``get_state``/``set_state`` save and restore an
episode in progress as plain JSON-able data.

Cost budget (``cost_budget``, ``lowbit.search.limits``; none by default): a finished plan over it
is not evaluated; the episode ends with reward -1 (the reward of a plan below the accuracy
threshold, the lowest the ReLeQ reward gives) and ``info["over_budget"] = True`` (accuracy None).
Within the budget, the reward's bits term is the plan's cost in the budget's own unit
(:func:`lowbit.search.reward.reward_state`), the language HAWQ's integer program speaks.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lowbit.errors import ConfigError
from lowbit.quant.bits import LOW_BITS, check_bits
from lowbit.search.evaluator import Evaluator, check_accuracy
from lowbit.search.limits import CostBudget
from lowbit.search.observation import (BUDGET_USED_MAX, DEFAULT_STATE, N_INFORMATIVE, N_PAPER, ProgressFeatures,
                                       check_state, param_shares, sensitivity_features, shape_features)
from lowbit.search.reward import RewardConfig, releq_reward, reward_state
from lowbit.search.sensitivity import Sensitivity
from lowbit.search.space import Bits, SearchSpace

N_FEATURES = N_PAPER
OVER_BUDGET_REWARD = -1.0
STATE_FORMAT = "lowbit-bitwidth-env"
STATE_VERSION = 1
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


class BitwidthEnv(gym.Env[np.ndarray, np.int64]):
    metadata = {"render_modes": []}

    def __init__(self, space: SearchSpace, evaluator: Evaluator, *, reward_config: RewardConfig = RewardConfig(),
                 weighted_state: bool = False, acc_float: float | None = None, start_bits: int = 8,
                 cost_budget: CostBudget | None = None, state: str = DEFAULT_STATE,
                 sensitivity: Sensitivity | None = None) -> None:
        self.space = space
        self.state = check_state(state, sensitivity, space)
        self.cost_budget = cost_budget
        self.evaluator = evaluator
        self.reward_config = reward_config
        self.weighted_state = bool(weighted_state)
        self.start_bits = check_bits(start_bits, allowed=LOW_BITS, what="start bitwidth")
        self.acc_float = check_accuracy(evaluator.float_accuracy() if acc_float is None else acc_float, "float model")
        if self.acc_float <= 0:
            raise ConfigError("the float accuracy must be > 0 (the reward divides by it)")
        self.n_layers = space.n_searched

        self._features = shape_features(space)  # (L, 4)
        if self.state == "paper":
            bits_high = max(1.0, self.start_bits / space.b_max)
            high = np.array([1.0, bits_high, bits_high, max(1.0, 1.0 / self.acc_float), 1.0, 1.0, 1.0,
                             max(1.0, float(self._features[:, 3].max()))], dtype=np.float32)
        else:
            assert sensitivity is not None
            self._layer_features = np.concatenate([sensitivity_features(space, sensitivity),
                                                   param_shares(space)[:, None], self._features[:, :3]], axis=1)
            self._progress = ProgressFeatures(space, cost_budget)
            high = np.ones(N_INFORMATIVE, dtype=np.float32)
            high[5] = BUDGET_USED_MAX
        self.observation_space = spaces.Box(np.zeros(len(high), dtype=np.float32), high, dtype=np.float32)
        self.action_space = spaces.Discrete(space.n_actions)
        self._index = 0
        self._chosen: list[Bits] = []
        self._last_accuracy: float | None = None

    # ---- episode ----------------------------------------------------------------------------
    def _start(self) -> Bits:
        return self.start_bits, (self.start_bits if self.space.search_acts else self.space.act_bits)

    def _bits_now(self) -> list[Bits]:
        return self._chosen + [self._start()] * (self.n_layers - len(self._chosen))

    def _observation(self) -> np.ndarray:
        if self.state == "informative":
            return self._informative()
        obs = np.zeros(N_FEATURES, dtype=np.float64)
        obs[0] = self._index / self.n_layers
        if self._index < self.n_layers:
            obs[1] = self.start_bits / self.space.b_max
            obs[4:] = self._features[self._index]
        obs[2] = self.space.quant_state(self._bits_now(), self.weighted_state)
        obs[3] = 1.0 if self._last_accuracy is None else self._last_accuracy / self.acc_float
        return obs.astype(np.float32)

    def _informative(self) -> np.ndarray:
        obs = np.zeros(N_INFORMATIVE, dtype=np.float64)
        obs[0] = self._index / self.n_layers
        obs[3:6] = self._progress(self._chosen)
        if self._index < self.n_layers:
            obs[[1, 2, 6, 7, 8, 9]] = self._layer_features[self._index]
        return obs.astype(np.float32)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._index, self._chosen, self._last_accuracy = 0, [], None
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._index >= self.n_layers:
            raise RuntimeError("the episode is over: call reset() before step()")
        arr = np.asarray(action)
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer) \
                or not 0 <= int(arr.reshape(-1)[0]) < self.space.n_actions:
            raise ConfigError(f"action {action!r} is not in Discrete({self.space.n_actions})")
        self._chosen.append(self.space.decode(int(arr.reshape(-1)[0])))
        self._index += 1
        if self._index < self.n_layers:
            return self._observation(), 0.0, False, False, {}
        choices = self.space.normalize(self._chosen)
        if self.cost_budget is not None and not self.cost_budget.allows(choices):
            state = reward_state(self.space, choices, self.weighted_state, self.cost_budget)
            info = {"plan_key": self.space.key(choices), "choices": [list(c) for c in choices], "accuracy": None,
                    "avg_bits": self.space.avg_bits(choices), "weighted_bits": self.space.weighted_bits(choices),
                    "quant_state": state, "reward": OVER_BUDGET_REWARD, "over_budget": True}
            return self._observation(), OVER_BUDGET_REWARD, True, False, info
        accuracy = check_accuracy(self.evaluator(choices), f"plan {self.space.key(choices)}")
        self._last_accuracy = accuracy
        state = reward_state(self.space, choices, self.weighted_state, self.cost_budget)
        reward = releq_reward(accuracy, self.acc_float, state, self.space.b_min, self.space.b_max, self.reward_config)
        info = {"plan_key": self.space.key(choices), "choices": [list(c) for c in choices], "accuracy": accuracy,
                "avg_bits": self.space.avg_bits(choices), "weighted_bits": self.space.weighted_bits(choices),
                "quant_state": state, "reward": reward}
        return self._observation(), float(reward), True, False, info

    # ---- serializable state -----------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The episode in progress and the RNG, as plain JSON-able data."""
        rng = self._np_random
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "index": self._index,
                "chosen": [list(c) for c in self._chosen], "last_accuracy": self._last_accuracy,
                "np_random": None if rng is None else rng.bit_generator.state,
                "np_random_seed": self._np_random_seed}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (validated: a bad state raises ``ConfigError``)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ConfigError(f"not a {STATE_FORMAT} version {STATE_VERSION} state")
        index, chosen = state.get("index"), state.get("chosen")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= self.n_layers \
                or not isinstance(chosen, list) or len(chosen) != index:
            raise ConfigError(f"env state: index {index!r} and {chosen!r} chosen bits do not fit "
                              f"{self.n_layers} searched layers")
        if not all(isinstance(c, (list, tuple)) and len(c) == 2 for c in chosen):
            raise ConfigError(f"env state: chosen bits must be (weight, act) pairs, got {chosen!r}")
        pairs = [tuple(c) for c in chosen]
        self.space.normalize(pairs + list(self.space.uniform())[index:])  # validates the bits chosen so far
        last = state.get("last_accuracy")
        rng_state = state.get("np_random")
        if rng_state is None:
            rng = None
        else:
            name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
            if name not in _BIT_GENERATORS:
                raise ConfigError(f"env state: unknown bit generator {name!r}")
            rng = np.random.Generator(getattr(np.random, name)())
            try:
                rng.bit_generator.state = rng_state
            except (TypeError, ValueError, KeyError) as exc:
                raise ConfigError(f"env state: invalid {name} state ({exc})") from None
        self._index = index
        self._chosen = [(int(w), int(a)) for w, a in pairs]
        self._last_accuracy = None if last is None else check_accuracy(last, "env state")
        self._np_random = rng
        self._np_random_seed = state.get("np_random_seed")
