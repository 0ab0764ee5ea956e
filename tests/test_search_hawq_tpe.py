"""HAWQ's integer program, Optuna's TPE and the cost budget every strategy respects (issue 19):
the program against exhaustive enumeration, the budget on every strategy (synthetic evaluator:
no training), TPE's resume, the cost tables against lowbit.costs, and the CLI end to end."""

from __future__ import annotations

import copy
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.cli.main import main
from lowbit.costs import compute_costs, layer_macs, model_costs
from lowbit.errors import ConfigError
from lowbit.nn.convert import quantize_
from lowbit.runs.search_run import SearchOptions
from lowbit.search import (Budget, CachedEvaluator, SearchSpace, SyntheticEvaluator, exhaustive_search, greedy_search,
                           random_search)
from lowbit.search.budget import remaining_budget
from lowbit.search.hawq import Allocation, allocation_costs, hawq_candidates, hawq_search, solve_allocation
from lowbit.search.limits import CostBudget, SpaceCosts, layer_options
from lowbit.search.sensitivity import LayerSensitivity, Sensitivity
from lowbit.search.tpe import tpe_search
from search_support import DiesAtCall, Killed, small_model, synthetic_sensitivity


def _space(**kwargs) -> SearchSpace:
    return SearchSpace.from_model(small_model(), pin_first_last=False, **kwargs)  # 4 layers


def _macs() -> dict[str, int]:
    return layer_macs(small_model(), torch.zeros(1, 1, 8, 8))


def _plans(space: SearchSpace):
    for plan in itertools.product(*(layer_options(space, n) for n in space.searched_names)):
        yield space.normalize(plan)


def _random_objective(space: SearchSpace, rng: np.random.Generator) -> dict:
    """A random Ω(l, (w, a)) that decreases with bits (as a quantization error does) plus noise."""
    out = {}
    for name in space.searched_names:
        scale = rng.uniform(0.1, 10.0)
        out[name] = {(w, a): scale * 2.0 ** -w + (0.0 if a == 32 else rng.uniform(0, 1) * 2.0 ** -a)
                     + rng.uniform(0, 1e-3) for w, a in layer_options(space, name)}
    return out


CASES = [({}, "bits", 4.0), ({}, "bytes", 900), ({}, "bops", None),
         ({"search_acts": True, "act_choices": (4, 8)}, "bits", 3.5),
         ({"search_acts": True, "act_choices": (4, 8)}, "bops", None)]


@pytest.mark.parametrize("kwargs,kind,value", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_program_matches_exhaustive_enumeration(kwargs, kind, value, seed) -> None:
    space = _space(bit_choices=(2, 3, 4, 8), **kwargs)
    costs = SpaceCosts.from_space(space, macs=_macs())
    rng = np.random.default_rng(seed)
    if value is None:  # halfway between the cheapest and the dearest plan
        value = float(costs.minimum(kind) + rng.uniform(0.2, 0.6) * (costs.maximum(kind) - costs.minimum(kind)))
    budget = CostBudget(kind, value, costs)
    objective = _random_objective(space, rng)
    allocation = Allocation(space, objective, budget)
    feasible = sorted((allocation.objective(p), space.key(p)) for p in _plans(space) if budget.allows(p))
    assert feasible, "the case must have plans within the budget"
    plan = solve_allocation(space, objective, budget)
    assert budget.allows(plan)
    assert allocation.objective(plan) == pytest.approx(feasible[0][0], rel=1e-9, abs=1e-12)
    best = hawq_candidates(space, objective, budget, 5)  # the 5 best plans, in order
    assert [allocation.objective(p) for p in best] == pytest.approx([v for v, _ in feasible[:5]], rel=1e-9, abs=1e-12)
    assert len({space.key(p) for p in best}) == len(best) and all(budget.allows(p) for p in best)
    sweep = hawq_candidates(space, objective, budget, 4, "sweep")
    assert sweep[0] == plan or allocation.objective(sweep[0]) == pytest.approx(feasible[0][0])
    assert len({space.key(p) for p in sweep}) == len(sweep) == 4 and all(budget.allows(p) for p in sweep)
    assert costs.cost(kind, sweep[-1]) <= costs.cost(kind, sweep[0])


def test_integer_program_infeasible_and_exhausted() -> None:
    space = _space(bit_choices=(2, 4))
    costs = SpaceCosts.from_space(space)
    with pytest.raises(ConfigError, match="no plan of the space"):
        CostBudget("bits", 1.5, costs).check_feasible()
    budget = CostBudget("bits", 2.0, costs)  # exactly one plan: every layer at 2 bits
    objective = _random_objective(space, np.random.default_rng(0))
    assert hawq_candidates(space, objective, budget, 3) == [space.uniform(2)]
    assert budget.count_within() == 1 and CostBudget("bits", 8, costs).count_within() == space.n_plans


def test_allocation_costs_floor_negative_traces() -> None:
    space = _space()
    sensitivity = synthetic_sensitivity(space)
    sensitivity.layers["2"].trace = -5.0  # a negative estimate: floored, so more bits never cost more
    objective = allocation_costs(space, sensitivity)
    values = [objective["2"][(b, 32)] for b in space.bit_choices]
    assert all(v > 0 for v in values) and values == sorted(values, reverse=True)


def _synthetic(space: SearchSpace) -> SyntheticEvaluator:
    return SyntheticEvaluator(space, sensitive={"2": 4, "5": 3}, drop=0.3, slope=0.01, noise=0.002)


def _budgets(space: SearchSpace) -> list[CostBudget]:
    costs = SpaceCosts.from_space(space, macs=_macs())
    middle = {k: costs.minimum(k) + 0.35 * (costs.maximum(k) - costs.minimum(k)) for k in costs.kinds}
    return [CostBudget("bits", 3.5, costs), CostBudget("bytes", middle["bytes"], costs),
            CostBudget("bops", middle["bops"], costs)]


def _strategies(space: SearchSpace):
    from lowbit.search.releq import PPOSettings, releq_search

    ppo = PPOSettings(episodes_per_update=4, n_epochs=2)
    sensitivity = synthetic_sensitivity(space)
    return {
        "random": lambda ev, b, cb: random_search(space, ev, b, seed=0, cost_budget=cb),
        "greedy": lambda ev, b, cb: greedy_search(space, ev, b, cost_budget=cb),
        "exhaustive": lambda ev, b, cb: exhaustive_search(space, ev, b, cost_budget=cb),
        "tpe": lambda ev, b, cb: tpe_search(space, ev, b, seed=0, cost_budget=cb),
        "hawq": lambda ev, b, cb: hawq_search(space, ev, sensitivity, cb, b),
        "releq": lambda ev, b, cb: releq_search(space, ev, b, seed=0, ppo=ppo, cost_budget=cb, max_episodes=40,
                                                  sensitivity=synthetic_sensitivity(space)),
    }


@pytest.mark.parametrize("acts", [False, True])
def test_every_strategy_respects_the_cost_budget(acts: bool) -> None:
    space = _space(search_acts=True, act_choices=(3, 4, 8)) if acts else _space()
    for budget in _budgets(space):
        for name, search in _strategies(space).items():
            synthetic = _synthetic(space)
            evaluator = CachedEvaluator(synthetic, space)
            outcome = search(evaluator, Budget(max_evals=12), budget)
            assert outcome.records, (name, budget.kind)
            over = [r.key for r in outcome.records if not budget.allows(r.choices)]
            assert not over, (name, budget.kind, over)
            assert all(budget.allows(space.choices_from_key(r.key)) for r in evaluator.records), name  # none evaluated
            assert budget.allows(outcome.best.choices)
            assert outcome.settings["cost_budget"]["kind"] == budget.kind, name
            assert outcome.evaluations <= 12


def test_random_search_under_a_budget_draws_uniformly_within_it() -> None:
    space = _space(bit_choices=(2, 4, 8))  # 81 plans
    budget = CostBudget("bits", 3.0, SpaceCosts.from_space(space))
    within = budget.count_within()
    assert within == sum(1 for p in _plans(space) if budget.allows(p))
    outcome = random_search(space, _synthetic(space), Budget(), seed=0, cost_budget=budget)
    assert len(outcome.records) == within and outcome.settings["stopped"] == "space exhausted"
    assert outcome.settings["rejected"] > 0


def test_no_cost_budget_changes_nothing() -> None:
    space = _space()
    for search in (lambda ev, **kw: random_search(space, ev, Budget(max_evals=10), seed=3, **kw),
                   lambda ev, **kw: greedy_search(space, ev, Budget(max_evals=10), **kw)):
        a, b = search(_synthetic(space)), search(_synthetic(space), cost_budget=None)
        assert [r.to_dict() | {"wall_s": 0} for r in a.records] == [r.to_dict() | {"wall_s": 0} for r in b.records]
        assert "cost_budget" not in a.settings and "rejected" not in a.settings


def test_tpe_is_seeded_and_beats_nothing_in_particular() -> None:
    space = _space()
    one = tpe_search(space, _synthetic(space), Budget(max_evals=15), seed=1)
    two = tpe_search(space, _synthetic(space), Budget(max_evals=15), seed=1)
    other = tpe_search(space, _synthetic(space), Budget(max_evals=15), seed=2)
    assert [r.key for r in one.records] == [r.key for r in two.records]
    assert [r.key for r in one.records] != [r.key for r in other.records]
    assert one.evaluations == 15 and len(one.records) == 15 and one.settings["stopped"] == "budget"
    assert one.best.reward == max(r.reward for r in one.records)


def test_tpe_stops_on_a_small_space() -> None:
    space = _space(bit_choices=(4, 8))  # 16 plans
    outcome = tpe_search(space, _synthetic(space), Budget(max_evals=100), seed=0, max_stall=100)
    assert len(outcome.records) <= 16 and outcome.settings["stopped"] in ("space exhausted", "stalled")


@pytest.mark.parametrize("with_budget", [False, True])
def test_tpe_resume_gives_the_uninterrupted_records(tmp_path, with_budget: bool) -> None:
    """Killed at its 8th evaluation and resumed on the cache file: the records (plans, order, accuracies,
    rewards) and the evaluations paid in all equal those of one uninterrupted search of 20."""
    space = _space()
    cb = CostBudget("bits", 4.0, SpaceCosts.from_space(space)) if with_budget else None
    whole = tpe_search(space, CachedEvaluator(_synthetic(space), space, tmp_path / "whole.jsonl"),
                       Budget(max_evals=20), seed=0, cost_budget=cb)
    path = tmp_path / "cut.jsonl"
    with pytest.raises(Killed):
        tpe_search(space, CachedEvaluator(DiesAtCall(_synthetic(space), 8), space, path), Budget(max_evals=20), seed=0,
                   cost_budget=cb)
    resumed_ev = CachedEvaluator(_synthetic(space), space, path)
    assert resumed_ev.loaded == 7
    resumed = tpe_search(space, resumed_ev, remaining_budget(20, None, resumed_ev), seed=0, cost_budget=cb)
    assert [r.to_dict() | {"wall_s": 0} for r in resumed.records] == \
           [r.to_dict() | {"wall_s": 0} for r in whole.records]
    assert resumed.evaluations == whole.evaluations == 20 and resumed_ev.evaluations == 13
    assert resumed.settings["trials"] == whole.settings["trials"]
    lines = [json.loads(x)["key"] for x in path.read_text().splitlines()[1:]]
    assert lines == [json.loads(x)["key"] for x in (tmp_path / "whole.jsonl").read_text().splitlines()[1:]]


def _bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 10))


@pytest.mark.parametrize("quantizer", ["dorefa", "pact", "lsq", "wrpn"])
def test_cost_tables_equal_lowbit_costs(quantizer: str) -> None:
    model, sample = _bn_model(), torch.zeros(1, 1, 8, 8)
    space = SearchSpace.from_model(model, (2, 3, 4, 8), search_acts=True, act_choices=(4, 8))
    costs = SpaceCosts.from_model(model, space, quantizer, sample)
    macs = layer_macs(model, sample)
    rng = random.Random(0)
    for _ in range(6):
        plan = space.normalize([(rng.choice(space.bit_choices), rng.choice(space.act_choices))
                                for _ in space.searched_names])
        quantized = copy.deepcopy(model)
        quantize_(quantized, space.to_plan(plan), quantizer)
        assert costs.cost("bytes", plan) == model_costs(quantized).size_bytes
        assert costs.cost("bops", plan) == compute_costs(macs, space.resolved(plan)).bops
        assert costs.cost("bits", plan) == pytest.approx(space.avg_bits(plan), abs=1e-12)


def test_budget_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="one cost budget"):
        SearchOptions(strategy="random", budget_bits=4, budget_bytes=1000).validate()
    with pytest.raises(ConfigError, match="hawq allocates bits under a cost budget"):
        SearchOptions(strategy="hawq").validate()
    with pytest.raises(ConfigError, match="budget-bits"):
        SearchOptions(strategy="tpe", budget_bits=0.0).validate()
    with pytest.raises(ConfigError, match="budget_bops"):
        SearchOptions(strategy="tpe", budget_bops=0).validate()
    SearchOptions(strategy="hawq", budget_bops=10**9).validate()


TINY = ["--model", "lenet5", "--dataset", "digits", "--float-epochs", "1", "--eval-steps", "5",
        "--eval-train-size", "200", "--finetune-epochs", "1", "--quiet", "--threads", "1"]


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_hawq_end_to_end(tmp_path) -> None:
    out = tmp_path / "hawq"
    assert main(["search", "--strategy", "hawq", "--budget-bits", "4", "--no-pin", "--max-evals", "3",
                 "--hessian-probes", "4", *TINY, "--out", str(out)]) == 0
    result = _result(out)
    search = result["search"]
    assert result["method"] == "hawq" and result["avg_bits"] <= 4.0
    assert search["cost_budget"]["kind"] == "bits" and search["cost_budget"]["value"] == 4.0
    assert search["evaluations"] == 3 and all(r["avg_bits"] <= 4.0 for r in search["pareto"])
    listed = search["settings"]["listed"]
    assert len(listed) == 3 and listed[0]["objective"] <= listed[1]["objective"] <= listed[2]["objective"]
    sensitivity = json.loads((out / "sensitivity.json").read_text())
    assert [layer["name"] for layer in sensitivity["layers"]] == ["conv1", "conv2", "fc3", "fc4", "fc5"]
    assert sensitivity["settings"]["probes"] == 4
    (out / "result.json").unlink()
    assert main(["search", "--out", str(out), "--resume", "--quiet"]) == 0  # sensitivity and plans reused
    again = _result(out)
    assert again["search"]["new_evaluations"] == 0 and again["search"]["best"] == search["best"]
    assert json.loads((out / "sensitivity.json").read_text()) == sensitivity


@pytest.mark.slow
def test_tpe_end_to_end_with_a_bytes_budget(tmp_path) -> None:
    out = tmp_path / "tpe"
    assert main(["search", "--strategy", "tpe", "--budget-bytes", "30000", "--max-evals", "4", *TINY,
                 "--out", str(out)]) == 0
    result = _result(out)
    assert result["method"] == "tpe" and result["size_bytes"] <= 30000
    assert result["search"]["evaluations"] == 4 and result["search"]["settings"]["trials"] >= 4
    assert main(["search", "--strategy", "hawq", *TINY, "--max-evals", "1", "--out", str(tmp_path / "x")]) == 2
    assert main(["search", "--strategy", "random", "--budget-bits", "1", *TINY, "--max-evals", "1",
                 "--out", str(tmp_path / "y")]) == 2  # no plan within: a user error before anything is written
    assert not (tmp_path / "y").exists()
