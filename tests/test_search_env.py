"""BitwidthEnv: the gymnasium API, the observation of METHODS.md section 5, determinism, saved state."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lowbit.errors import BitwidthError, ConfigError
from lowbit.search import BitwidthEnv, CachedEvaluator, RewardConfig, SyntheticEvaluator, plan_reward
from search_support import small_space

SPACES = [{}, {"search_acts": True}, {"pin_first_last": False}, {"search_acts": True, "pin_first_last": False}]


def _env(weighted_state: bool = False, noise: float = 0.02, **space_kwargs) -> BitwidthEnv:
    space = small_space(**space_kwargs)
    inner = SyntheticEvaluator(space, sensitive={"2": 4}, noise=noise)
    return BitwidthEnv(space, CachedEvaluator(inner, space), weighted_state=weighted_state, state="paper")


@pytest.mark.parametrize("kwargs", SPACES)
@pytest.mark.parametrize("weighted", [False, True])
def test_check_env_with_warnings_as_errors(kwargs, weighted) -> None:
    env = _env(weighted, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # no render modes: the render check would only warn that a spec-less env has none to test
        check_env(env, skip_render_check=True)


def test_observation_by_hand() -> None:
    env = _env(noise=0.0)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and info == {}
    # layer '2' of the searched ('2', '5'): index 0/2, bits 8/8, quant_state (8+8)/16, acc_state 1;
    # out-channels over all layers (4, 8, 16, 10): (8-4)/12; in (1, 4, 128, 16): 3/127; kernel (9, 9, 0, 0): 1
    std2 = env.space.layers[1].weight_std
    np.testing.assert_allclose(obs, np.float32([0, 1, 1, 1, 1 / 3, 3 / 127, 1, std2]), rtol=1e-6)
    obs, reward, terminated, truncated, info = env.step(env.space.encode(4))
    std5 = env.space.layers[2].weight_std
    np.testing.assert_allclose(obs, np.float32([0.5, 1, (4 + 8) / 16, 1, 1, 1, 0, std5]), rtol=1e-6)
    assert (reward, terminated, truncated, info) == (0.0, False, False, {})
    obs, reward, terminated, truncated, info = env.step(env.space.encode(2))
    acc = env.evaluator.inner([4, 2])
    np.testing.assert_allclose(obs, np.float32([1, 0, (4 + 2) / 16, acc / 0.9, 0, 0, 0, 0]), rtol=1e-6)
    assert terminated and not truncated
    assert reward == pytest.approx(plan_reward(env.space, [4, 2], acc, 0.9))
    assert info["plan_key"] == "8/32,4/32,2/32,8/32" and info["accuracy"] == acc and info["avg_bits"] == 5.5
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_weighted_state_and_reward_config() -> None:
    env = _env(weighted_state=True, noise=0.0)
    env.reset(seed=0)
    obs, *_ = env.step(env.space.encode(4))
    assert obs[2] == pytest.approx((288 * 4 + 2048 * 8) / (8 * 2336))
    cfg = RewardConfig(th=0.99)
    space = small_space()
    env = BitwidthEnv(space, SyntheticEvaluator(space, sensitive={"2": 4}), reward_config=cfg, state="paper")
    env.reset(seed=0)
    env.step(0)
    assert env.step(0)[1] == -1.0  # 2-bit '2' loses 0.3 of 0.9: y = 0.65 < 0.99


@pytest.mark.parametrize("bad", [7, -1, 1.0, np.array([1, 2]), True])
def test_invalid_actions(bad) -> None:
    env = _env()
    env.reset(seed=0)
    with pytest.raises(ConfigError):
        env.step(bad)
    env.step(np.array([3]))  # a one-element array, as vectorised agents pass
    env.step(np.int64(0))


def _rollouts(env: BitwidthEnv, seed: int, episodes: int = 6):
    rng = np.random.default_rng(seed)
    obs_all, rewards, keys = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        obs_all.append(obs)
        done = False
        while not done:
            obs, reward, done, _, info = env.step(int(rng.integers(env.space.n_actions)))
            obs_all.append(obs)
            rewards.append(reward)
        keys.append(info["plan_key"])
    return np.stack(obs_all), np.array(rewards), keys


@pytest.mark.parametrize("kwargs", SPACES)
def test_same_seed_same_episodes(kwargs) -> None:
    obs_a, rew_a, keys_a = _rollouts(_env(**kwargs), seed=3)
    obs_b, rew_b, keys_b = _rollouts(_env(**kwargs), seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    assert keys_a == keys_b
    obs_c, rew_c, keys_c = _rollouts(_env(**kwargs), seed=4)
    assert keys_c != keys_a


def test_state_round_trip_mid_episode() -> None:
    env = _env(search_acts=True, pin_first_last=False)
    env.reset(seed=11)
    env.step(7)
    env.step(3)
    state = json.loads(json.dumps(env.get_state()))  # plain data
    rest = [12, 5]
    expected = [env.step(a) for a in rest]
    expected_rng = env.np_random.bit_generator.state

    other = _env(search_acts=True, pin_first_last=False)
    other.set_state(state)
    assert other.np_random.bit_generator.state == expected_rng
    assert other.np_random_seed == 11
    got = [other.step(a) for a in rest]
    for (o1, r1, t1, _, i1), (o2, r2, t2, _, i2) in zip(expected, got):
        np.testing.assert_array_equal(o1, o2)
        assert (r1, t1, i1) == (r2, t2, i2)
    assert other.get_state() == env.get_state()


@pytest.mark.parametrize("patch", [{"index": 5}, {"chosen": [[9, 32]], "index": 1}, {"format": "x"},
                                   {"np_random": {"bit_generator": "os.system"}}, {"index": 1},
                                   {"chosen": [4], "index": 1}, {"np_random": {"bit_generator": "PCG64"}},
                                   {"last_accuracy": 2.0}])
def test_bad_state_is_refused(patch) -> None:
    env = _env()
    env.reset(seed=0)
    state = {**env.get_state(), **patch}
    with pytest.raises((ConfigError, BitwidthError)):
        env.set_state(state)
