"""Run a search strategy by name (ReLeQ, Elthakeb et al., METHODS.md section 5, or a comparator:
random, greedy, HAWQ's integer program, Optuna's TPE) under one evaluator, evaluation budget and
(optional) cost budget, and summarise the outcome for ``result.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError, unknown_name
from lowbit.search.baselines import greedy_search, random_search
from lowbit.search.budget import Budget, remaining_budget
from lowbit.search.evaluator import CachedEvaluator
from lowbit.search.hawq import hawq_search
from lowbit.search.limits import CostBudget
from lowbit.search.outcome import SearchOutcome
from lowbit.search.parallel import ParallelEvaluator
from lowbit.search.reward import RewardConfig
from lowbit.search.observation import DEFAULT_STATE
from lowbit.search.sensitivity import Sensitivity
from lowbit.search.space import SearchSpace
from lowbit.search.tpe import tpe_search
from lowbit.train import QUIET, Reporter

STRATEGIES = ("releq", "random", "greedy", "hawq", "tpe")


def run_strategy(strategy: str, space: SearchSpace, evaluator: CachedEvaluator, *, max_evals: int | None,
                 time_limit: float | None, seed: int, reward_config: RewardConfig, weighted_state: bool = False,
                 ppo: Any = None, agent_dir: Path | None = None, resume: bool = False, workers: int = 1,
                 reporter: Reporter = QUIET, cost_budget: CostBudget | None = None,
                 sensitivity: Sensitivity | None = None, hawq_candidates: str = "kbest",
                 releq_state: str = DEFAULT_STATE) -> SearchOutcome:
    """Random, greedy, HAWQ and TPE get the budget the cache file has not spent
    (``lowbit.search.budget.remaining_budget``); the agent keeps its own count in ``agent_dir``.
    ``cost_budget`` (None: no cost budget, the searches as before) applies to every strategy; HAWQ
    needs it and ``sensitivity``, and so does ReLeQ's ``releq_state="informative"``
    (``lowbit.search.observation``)."""
    if strategy not in STRATEGIES:
        raise unknown_name("search strategy", strategy, STRATEGIES)
    common: dict[str, Any] = {"reward_config": reward_config, "weighted_state": weighted_state}
    if cost_budget is not None:
        common["cost_budget"] = cost_budget
        reporter.log(f"cost budget: {cost_budget.kind} <= {cost_budget.value:,g} (the cheapest plan costs "
                     f"{cost_budget.costs.minimum(cost_budget.kind):,.6g})")
    budget = (Budget(max_evals, time_limit) if strategy == "releq"
              else remaining_budget(max_evals, time_limit, evaluator))
    reporter.log(f"{strategy} search over {space.n_searched} layers ({space.n_plans:,} plans), budget "
                 f"{budget.to_dict()}, {len(evaluator.records)} plan(s) already in the cache")
    if strategy == "random":
        return random_search(space, evaluator, budget, seed, **common)
    if strategy == "greedy":
        return greedy_search(space, evaluator, budget, **common)
    if strategy == "tpe":
        return tpe_search(space, evaluator, budget, seed, **common)
    if strategy == "hawq":
        if cost_budget is None or sensitivity is None:
            raise ConfigError("hawq needs a cost budget (--budget-bits, --budget-bytes or --budget-bops) and the "
                              "layers' sensitivity")
        return hawq_search(space, evaluator, sensitivity, cost_budget, budget, reward_config=reward_config,
                           weighted_state=weighted_state, candidates=hawq_candidates)
    from lowbit.search.releq import releq_search

    seen: set[str] = set()
    best = [float("-inf")]
    with reporter.bar("ReLeQ plans", max_evals or 0) as bar:
        def on_episode(episode: dict[str, Any]) -> None:
            best[0] = max(best[0], episode["reward"])
            if episode["plan_key"] not in seen and episode.get("accuracy") is not None:  # None: over the cost budget
                seen.add(episode["plan_key"])
                bar.advance(f"best reward {best[0]:.3f}")

        return releq_search(space, evaluator, budget, seed, ppo=ppo, state_dir=agent_dir, resume=resume,
                            n_envs=workers, on_episode=on_episode, state=releq_state, sensitivity=sensitivity,
                            **common)


def search_summary(outcome: SearchOutcome, space: SearchSpace, evaluator: CachedEvaluator) -> dict[str, Any]:
    """``result.json["search"]``: the space, the evaluations paid and cached, the best plan, the Pareto
    front and its hypervolume, the budget and the strategy's settings."""
    best = outcome.best
    assert best is not None
    ref_bits = float(max(space.b_max, space.pin_bits) if space.pin_first_last else space.b_max)
    settings = dict(outcome.settings)
    return {
        "strategy": outcome.strategy, "space": space.to_dict(), "n_plans": space.n_plans,
        "evaluations": outcome.evaluations, "new_evaluations": evaluator.evaluations,
        "cache_hits": outcome.cache_hits, "loaded_from_cache": evaluator.loaded, "plans_visited": len(outcome.records),
        "best_reward": best.reward, "best": {"key": best.key, "choices": [list(c) for c in best.choices],
                                             "val_accuracy": best.accuracy, "avg_bits": best.avg_bits,
                                             "weighted_bits": best.weighted_bits, "reward": best.reward},
        "acc_float": outcome.acc_float, "pareto": [r.to_dict() for r in outcome.pareto],
        "hypervolume": outcome.hypervolume(ref_bits, 0.0), "hypervolume_ref": {"bits": ref_bits, "accuracy": 0.0},
        "wall_s": outcome.wall_s, "budget": settings.get("budget"), "stopped": settings.get("stopped"),
        "reward_config": outcome.reward_config, "evaluator": evaluator.describe(),
        "ppo": settings.get("ppo"), "episodes": settings.get("episodes"), "settings": settings,
        "workers": evaluator.workers if isinstance(evaluator, ParallelEvaluator) else 1,
        **({"cost_budget": settings["cost_budget"]} if "cost_budget" in settings else {}),
    }
