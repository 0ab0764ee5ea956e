"""Random / greedy / exhaustive search and the outcome's Pareto front and hypervolume."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torch import nn

from lowbit.search import (Budget, CachedEvaluator, EvalRecord, SearchOutcome, SearchSpace, SyntheticEvaluator,
                           exhaustive_search, greedy_search, hypervolume, pareto_front, random_search)
from search_support import small_space


def _rec(bits: float, acc: float, key: str = "") -> EvalRecord:
    return EvalRecord(key or f"{bits}:{acc}", (), acc, bits, bits)


# ---- Pareto front and hypervolume ------------------------------------------------------------
def test_pareto_front_by_hand() -> None:
    records = [_rec(2, 0.5), _rec(4, 0.8), _rec(3, 0.4), _rec(8, 0.9), _rec(5, 0.8), _rec(4, 0.8, "twin"),
               _rec(6, 0.85)]
    front = pareto_front(records)
    # (3, 0.4) is dominated by (2, 0.5); (5, 0.8) by (4, 0.8); the twin of (4, 0.8) stays
    assert [(r.avg_bits, r.accuracy) for r in front] == [(2, 0.5), (4, 0.8), (4, 0.8), (6, 0.85), (8, 0.9)]
    assert pareto_front([]) == []


def test_hypervolume_by_hand() -> None:
    front = [(2, 0.5), (4, 0.8), (8, 0.9)]
    # reference (8 bits, accuracy 0): (4-2)*0.5 + (8-4)*0.8 + (8-8)*0.9 = 1 + 3.2 + 0 = 4.2
    assert hypervolume(front) == pytest.approx(4.2)
    # reference (10, 0.2): (4-2)*(0.5-0.2) + (8-4)*(0.8-0.2) + (10-8)*(0.9-0.2) = 0.6 + 2.4 + 1.4 = 4.4
    assert hypervolume(front, ref_bits=10, ref_acc=0.2) == pytest.approx(4.4)
    # points at or beyond the reference add nothing; dominated points change nothing
    assert hypervolume(front + [(9, 1.0), (3, 0.1), (5, 0.7)]) == pytest.approx(4.2)
    assert hypervolume([_rec(6, 0.5)]) == pytest.approx(2 * 0.5)
    assert hypervolume([]) == 0.0


points = st.lists(st.tuples(st.sampled_from([2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0]),
                            st.floats(0.0, 1.0, allow_nan=False)), max_size=12)


@given(points)
def test_pareto_properties(pts) -> None:
    records = [_rec(b, a, f"{i}") for i, (b, a) in enumerate(pts)]
    front = pareto_front(records)
    keys = {r.key for r in front}
    for r in records:
        dominators = [s for s in front if s.accuracy >= r.accuracy and s.avg_bits <= r.avg_bits
                      and (s.accuracy > r.accuracy or s.avg_bits < r.avg_bits)]
        assert (r.key in keys) == (not dominators)
    assert hypervolume(front) == pytest.approx(hypervolume(records))
    assert 0.0 <= hypervolume(records) <= 8.0


# ---- searches ------------------------------------------------------------------------------
def _space_and_evaluator(**kwargs):
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(),
                          nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    space = SearchSpace.from_model(model, **kwargs)  # searched '2', '4', '6'
    inner = SyntheticEvaluator(space, sensitive={"2": 4, "6": 3}, slope=0.02)
    return space, inner


def _optimum_by_exhaustion(space, inner):
    outcome = exhaustive_search(space, inner)
    assert outcome.evaluations == space.n_plans and outcome.settings["stopped"] == "space exhausted"
    return outcome.best


@pytest.mark.parametrize("kwargs", [{}, {"bit_choices": (2, 4, 8)}])
def test_greedy_and_random_find_the_known_optimum(kwargs) -> None:
    space, inner = _space_and_evaluator(**kwargs)
    best = _optimum_by_exhaustion(space, inner)
    assert best.choices == inner.optimum()
    greedy = greedy_search(space, inner)
    assert greedy.best.choices == inner.optimum() and greedy.settings["stopped"] == "converged"
    assert greedy.evaluations < space.n_plans
    rand = random_search(space, inner, Budget(max_evals=space.n_plans), seed=0)
    assert rand.best.choices == inner.optimum()
    assert rand.best.reward == pytest.approx(best.reward)


def test_greedy_finds_the_optimum_with_activations() -> None:
    space = small_space(search_acts=True, act_choices=(2, 4, 8))
    inner = SyntheticEvaluator(space, sensitive={"2": 4}, act_sensitive={"5": 4}, slope=0.02)
    assert _optimum_by_exhaustion(space, inner).choices == inner.optimum() == ((4, 2), (2, 4))
    assert greedy_search(space, inner).best.choices == inner.optimum()


def test_greedy_rule_by_hand() -> None:
    space, inner = _space_and_evaluator()
    outcome = greedy_search(space, CachedEvaluator(inner, space))
    # start (8, 8, 8); layer '2': 5 ok, 4 ok, 3 drops below its floor -> stop at 4 (3 evaluations);
    # layer '4': 5, 4, 3, 2 all ok (4); layer '6': 5, 4, 3 ok, 2 below its floor (4): 1 + 3 + 4 + 4 = 12
    assert outcome.evaluations == 12 and inner.calls == 12
    assert [r.key for r in outcome.records][:4] == ["8/32,8/32,8/32,8/32,8/32", "8/32,5/32,8/32,8/32,8/32",
                                                   "8/32,4/32,8/32,8/32,8/32", "8/32,3/32,8/32,8/32,8/32"]
    limited = greedy_search(space, SyntheticEvaluator(space, sensitive={"2": 4}), Budget(max_evals=3))
    assert limited.evaluations == 3 and limited.settings["stopped"] == "budget"


def test_random_search_seeds() -> None:
    space, inner = _space_and_evaluator()
    a = random_search(space, inner, Budget(max_evals=10), seed=0)
    b = random_search(space, SyntheticEvaluator(space, sensitive={"2": 4, "6": 3}, slope=0.02),
                      Budget(max_evals=10), seed=0)
    c = random_search(space, inner, Budget(max_evals=10), seed=1)
    assert [r.key for r in a.records] == [r.key for r in b.records]
    assert [r.reward for r in a.records] == [r.reward for r in b.records]
    assert [r.key for r in a.records] != [r.key for r in c.records]
    assert a.evaluations == 10 and len(a.records) == 10


def test_random_search_ends_when_the_space_is_exhausted() -> None:
    space = small_space(bit_choices=(2, 8))
    inner = SyntheticEvaluator(space)
    outcome = random_search(space, inner, Budget(), seed=0)
    assert outcome.settings["stopped"] == "space exhausted" and outcome.evaluations == 4 == inner.calls
    assert random_search(space, inner, seed=0, max_draws=2).settings["stopped"] == "max_draws"


def test_outcome_serialises() -> None:
    space, inner = _space_and_evaluator()
    outcome = greedy_search(space, inner)
    data = json.loads(json.dumps(outcome.to_dict()))
    again = SearchOutcome.from_dict(data)
    assert again.records == outcome.records and again.best == outcome.best
    assert data["best"]["key"] == outcome.best.key and data["reward_config"] == {"th": 0.4, "a": 0.8, "b": 1.0}
    assert data["hypervolume"] == pytest.approx(outcome.hypervolume())
    assert data["pareto"] == [r.key for r in outcome.pareto]
    assert space.to_plan(outcome.best.choices).resolve(list(space.layer_names))
