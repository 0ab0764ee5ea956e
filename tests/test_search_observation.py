"""ReLeQ's informative observation and the reward's budget term (issue 19, part 4):
check_env, no feature constant across an episode's decision steps, the reward in the budget's unit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lowbit.errors import ConfigError
from lowbit.search import BitwidthEnv, Budget, CachedEvaluator, SyntheticEvaluator, releq_search
from lowbit.search.limits import CostBudget, SpaceCosts
from lowbit.search.observation import N_INFORMATIVE
from lowbit.search.releq import PPOSettings
from lowbit.search.reward import reward_state
from search_support import small_space, synthetic_sensitivity

SPACES = [{}, {"search_acts": True}, {"pin_first_last": False}, {"search_acts": True, "pin_first_last": False}]


def _env(state: str = "informative", budget_kind: str | None = None, **space_kwargs) -> BitwidthEnv:
    space = small_space(**space_kwargs)
    evaluator = CachedEvaluator(SyntheticEvaluator(space, sensitive={"2": 4}, noise=0.0), space)
    cost_budget = None
    if budget_kind is not None:
        costs = SpaceCosts.from_space(space)
        cost_budget = CostBudget(budget_kind, 0.6 * costs.maximum(budget_kind), costs)
    return BitwidthEnv(space, evaluator, state=state, cost_budget=cost_budget,
                       sensitivity=synthetic_sensitivity(space) if state == "informative" else None)


def _decision_observations(env: BitwidthEnv, actions: list[int]) -> np.ndarray:
    obs, _ = env.reset(seed=0)
    seen = [obs]
    for action in actions[:-1]:
        obs, _, done, _, _ = env.step(action)
        assert not done
        seen.append(obs)
    env.step(actions[-1])
    return np.stack(seen)


@pytest.mark.parametrize("kwargs", SPACES)
@pytest.mark.parametrize("budget_kind", [None, "bits", "bytes"])
def test_informative_observation_passes_check_env(kwargs, budget_kind) -> None:
    env = _env(budget_kind=budget_kind, **kwargs)
    assert env.observation_space.shape == (N_INFORMATIVE,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize("budget_kind", [None, "bits"])
def test_no_informative_feature_is_constant_across_an_episode(budget_kind) -> None:
    env = _env(budget_kind=budget_kind, pin_first_last=False)  # 4 searched layers
    top = env.space.n_actions - 1
    seen = _decision_observations(env, [top, 0, top, 0])
    assert seen.shape == (4, N_INFORMATIVE)
    constant = [i for i in range(N_INFORMATIVE) if np.ptp(seen[:, i]) == 0]
    assert constant == []
    assert np.all(seen >= 0) and np.all(seen <= env.observation_space.high)


def test_the_paper_state_has_the_two_constant_features_the_issue_names() -> None:
    env = _env("paper", pin_first_last=False)
    top = env.space.n_actions - 1
    seen = _decision_observations(env, [top, 0, top, 0])
    constant = [i for i in range(seen.shape[1]) if np.ptp(seen[:, i]) == 0]
    assert constant == [1, 3]  # current bits (always the start bits) and acc_state (reset every episode)


def test_informative_features_by_hand() -> None:
    env = _env(pin_first_last=False)
    space = env.space
    obs, _ = env.reset(seed=0)
    assert obs[0] == 0 and obs[3] == 0 and obs[4] == 0
    assert obs[5] == pytest.approx(space.quant_state(space.uniform(min(space.bit_choices))))  # all at b_min
    counts = np.array([layer.params for layer in space.searched_layers], dtype=float)
    assert obs[6] == pytest.approx(counts[0] / counts.sum())
    obs, *_ = env.step(space.n_actions - 1)  # layer 0 at the most bits
    assert obs[0] == pytest.approx(0.25) and obs[3] == pytest.approx(1.0) and obs[4] == pytest.approx(1.0)
    sens = synthetic_sensitivity(space)
    omegas = [sens.omega(n, min(space.bit_choices)) for n in space.searched_names]
    assert (obs[1] == 1.0) == (omegas[1] == max(omegas)) and (obs[1] == 0.0) == (omegas[1] == min(omegas))


def test_informative_state_needs_the_sensitivity_of_every_searched_layer() -> None:
    space = small_space()
    evaluator = CachedEvaluator(SyntheticEvaluator(space), space)
    with pytest.raises(ConfigError, match="needs the layers' sensitivity"):
        BitwidthEnv(space, evaluator)
    partial = synthetic_sensitivity(space)
    partial.layers.pop(space.searched_names[0])
    with pytest.raises(ConfigError, match="no entry for searched layers"):
        BitwidthEnv(space, evaluator, sensitivity=partial)
    with pytest.raises(ConfigError, match="unknown ReLeQ state"):
        BitwidthEnv(space, evaluator, state="mine", sensitivity=synthetic_sensitivity(space))


def test_reward_state_speaks_the_budget_unit() -> None:
    space = small_space(pin_first_last=False)
    costs = SpaceCosts.from_space(space)
    floor = space.b_min / space.b_max
    for kind in costs.kinds:
        budget = CostBudget(kind, costs.maximum(kind), costs)
        assert reward_state(space, space.uniform(space.b_min), cost_budget=budget) == pytest.approx(floor)
        assert reward_state(space, space.uniform(space.b_max), cost_budget=budget) == pytest.approx(1.0)
    bits = CostBudget("bits", 8, costs)
    rng = np.random.default_rng(0)
    for _ in range(10):  # every layer searched, weights only: the bits budget's state is quant_state
        plan = [space.decode(int(a)) for a in rng.integers(0, space.n_actions, space.n_searched)]
        assert reward_state(space, plan, cost_budget=bits) == pytest.approx(space.quant_state(plan))
    by_bytes = CostBudget("bytes", costs.maximum("bytes"), costs)
    big_first = [(8, 32)] + [(2, 32)] * (space.n_searched - 1)
    big_last = [(2, 32)] * (space.n_searched - 1) + [(8, 32)]
    # layer sizes differ: bytes weigh the plans by parameters, quant_state does not
    assert space.quant_state(big_first) == space.quant_state(big_last)
    assert reward_state(space, big_first, cost_budget=by_bytes) != reward_state(space, big_last, cost_budget=by_bytes)


def test_releq_with_the_informative_state_is_deterministic_and_records_it() -> None:
    space = small_space(pin_first_last=False)
    ppo = PPOSettings(episodes_per_update=4, n_epochs=2)

    def run():
        evaluator = CachedEvaluator(SyntheticEvaluator(space, sensitive={"2": 4}, noise=0.0), space)
        return releq_search(space, evaluator, Budget(max_evals=8), seed=3, ppo=ppo, max_episodes=24,
                            sensitivity=synthetic_sensitivity(space))

    first, second = run(), run()
    assert first.settings["state"] == "informative"
    assert first.settings["episode_plans"] == second.settings["episode_plans"]
    assert first.evaluations <= 8
