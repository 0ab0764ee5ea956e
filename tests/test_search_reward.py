"""The ReLeQ terminal reward (METHODS.md section 5) against hand-computed values and its properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import ConfigError
from lowbit.search import RewardConfig, plan_reward, releq_reward
from search_support import small_space

# (acc, acc_float, quant_state, b_min, b_max, (th, a, b), expected R). y = acc / acc_float,
# x = quant_state - b_min / b_max, R = 2 * ((1 - x^a) * y^(b/y) - 0.5) unless y < th (R = -1).
# Values worked out by hand with logarithms and checked to 20 digits with mpmath (not lowbit).
TABLE = [
    # y = 1, x = 0.25 - 2/8 = 0: R = 2 * (1 * 1 - 0.5) = 1
    (0.9, 0.9, 0.25, 2, 8, (0.4, 0.8, 1.0), 1.0),
    # y = 1, x = 1 - 0.25 = 0.75: 0.75^0.8 = exp(0.8 * ln 0.75) = exp(-0.2301457) = 0.79441788;
    # R = 2 * (0.20558212 - 0.5) = -0.58883576
    (0.9, 0.9, 1.0, 2, 8, (0.4, 0.8, 1.0), -0.58883576157321838),
    # y = 0.5, x = 0: y^(1/y) = 0.5^2 = 0.25; R = 2 * (0.25 - 0.5) = -0.5
    (0.45, 0.9, 0.25, 2, 8, (0.4, 0.8, 1.0), -0.5),
    # y = 0.3 < th = 0.4: R = -1 whatever the bits
    (0.27, 0.9, 0.25, 2, 8, (0.4, 0.8, 1.0), -1.0),
    # y = th exactly (0.4 / 1.0; 0.36 / 0.9 would round below 0.4) is not below it:
    # 0.4^2.5 = 0.16 * sqrt(0.4) = 0.16 * 0.63245553 = 0.10119289; R = 2 * (0.10119289 - 0.5) = -0.79761423
    (0.4, 1.0, 0.25, 2, 8, (0.4, 0.8, 1.0), -0.79761422974922372),
    # a = b = 1, y = 0.8, x = 0.5 - 0.25 = 0.25: 0.8^1.25 = exp(1.25 * ln 0.8) = exp(-0.2789294) = 0.75659329;
    # R = 2 * (0.75 * 0.75659329 - 0.5) = 0.13488993
    (0.64, 0.8, 0.5, 2, 8, (0.4, 1.0, 1.0), 0.13488993080381098),
    # y = 0.9, x = 0.375 - 0.25 = 0.125: 0.125^0.8 = 2^-2.4 = 0.18946457;
    # 0.9^(1/0.9) = exp(-0.1053605 / 0.9) = exp(-0.1170672) = 0.88952538;
    # R = 2 * ((1 - 0.18946457) * 0.88952538 - 0.5) = 0.44198367
    (0.72, 0.8, 0.375, 2, 8, (0.4, 0.8, 1.0), 0.44198367098318691),
    # b = 2, y = 0.9, x = 0: 0.9^(2/0.9) = exp(-0.2341344) = 0.79125540; R = 2 * (0.7912554 - 0.5) = 0.58251080
    (0.72, 0.8, 0.25, 2, 8, (0.4, 0.8, 2.0), 0.58251080263151785),
    # th = 0 and y = 0: y^(b/y) is taken at its limit 0, so R = 2 * (0 - 0.5) = -1
    (0.0, 0.8, 0.5, 2, 8, (0.0, 0.8, 1.0), -1.0),
    # b_min/b_max = 3/5 = 0.6, quant_state 0.6: x = 0, y = 1 -> 1
    (0.5, 0.5, 0.6, 3, 5, (0.4, 0.8, 1.0), 1.0),
]


@pytest.mark.parametrize("acc, acc_float, state, b_min, b_max, params, expected", TABLE)
def test_reward_table(acc, acc_float, state, b_min, b_max, params, expected) -> None:
    cfg = RewardConfig(*params)
    assert releq_reward(acc, acc_float, state, b_min, b_max, cfg) == pytest.approx(expected, abs=1e-12)


def test_threshold_branch() -> None:
    cfg = RewardConfig(th=0.5)
    assert releq_reward(0.2495, 0.5, 0.25, 2, 8, cfg) == -1.0  # y = 0.499 < 0.5
    assert releq_reward(0.25, 0.5, 0.25, 2, 8, cfg) == pytest.approx(-0.5)  # y = 0.5 exactly uses the formula


def test_edges_raise_or_clip() -> None:
    with pytest.raises(ConfigError, match="float accuracy"):
        releq_reward(0.5, 0.0, 0.5, 2, 8)
    with pytest.raises(ConfigError):
        releq_reward(float("nan"), 0.9, 0.5, 2, 8)
    with pytest.raises(ConfigError, match="below its minimum"):
        releq_reward(0.9, 0.9, 0.2, 2, 8)  # x = -0.05: bits below b_min cannot happen
    assert releq_reward(0.9, 0.9, 0.25 - 1e-12, 2, 8) == 1.0  # rounding shortfall is clipped
    with pytest.raises(ConfigError):
        releq_reward(0.9, 0.9, 0.5, 8, 2)


@pytest.mark.parametrize("kwargs", [{"th": -0.1}, {"th": 1.5}, {"a": 0}, {"b": -1}, {"a": float("inf")}, {"th": "x"}])
def test_reward_config_validation(kwargs) -> None:
    with pytest.raises(ConfigError):
        RewardConfig(**kwargs)
    assert RewardConfig().to_dict() == {"th": 0.4, "a": 0.8, "b": 1.0}


@given(y=st.floats(0.4, 1.0), x=st.floats(0.0, 1.0), a=st.floats(0.1, 3.0), b=st.floats(0.1, 3.0))
def test_reward_range_and_monotonicity(y: float, x: float, a: float, b: float) -> None:
    cfg = RewardConfig(0.4, a, b)
    # acc_float = 1 and b_min/b_max = 1/8 so that y = acc and x = quant_state - 0.125
    r = releq_reward(y, 1.0, x + 0.125, 1, 8, cfg)
    assert -1.0 <= r <= 1.0
    expected = 2 * ((1 - x ** a) * y ** (b / y) - 0.5)
    assert math.isclose(r, expected, rel_tol=1e-12, abs_tol=1e-12)
    # fewer bits (smaller x) and higher accuracy never lower the reward
    assert releq_reward(y, 1.0, x / 2 + 0.125, 1, 8, cfg) >= r - 1e-12
    assert releq_reward(min(1.0, y + 0.05), 1.0, x + 0.125, 1, 8, cfg) >= r - 1e-12


def test_plan_reward_uses_the_space_state() -> None:
    space = small_space()
    # all searched layers at b_min: x = 0; y = 0.9 / 0.9 = 1 -> 1
    assert plan_reward(space, [2, 2], 0.9, 0.9) == 1.0
    # [8, 8]: quant_state 1, x = 0.75 (the second row of the table)
    assert plan_reward(space, [8, 8], 0.9, 0.9) == pytest.approx(-0.58883576157321838)
