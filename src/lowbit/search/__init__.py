"""Per-layer bitwidth search: ReLeQ (Elthakeb et al.), METHODS.md section 5.

The pieces every strategy shares: the search space (layers, bit choices, pins, plan keys), the
ReLeQ reward, the cached plan -> accuracy evaluator, the evaluation budget, the gymnasium
environment the PPO agent trains in, and the random / greedy / exhaustive comparators; and the
solvers a user would pick instead (issue 19): per-layer sensitivity (``sensitivity``: Hutchinson
Hessian traces and quantization perturbations), HAWQ's integer program (``hawq``, SciPy's
``milp``) and Optuna's TPE (``tpe``), with the cost budget every strategy respects
(``limits``: average bits, bytes or BOPs). Only ``lowbit.search.releq`` (the agent) imports
stable-baselines3; nothing here does (SciPy and Optuna load when a solver runs).

>>> space = SearchSpace.from_model(model, bit_choices=(2, 3, 4, 5, 8))
>>> evaluator = CachedEvaluator(FineTuneEvaluator(model, space, train_loader, val_loader), space, "cache.jsonl")
>>> outcome = random_search(space, evaluator, Budget(max_evals=100), seed=0)
>>> space.to_plan(outcome.best.choices).save("plan.json")
"""

from __future__ import annotations

from typing import Any

from lowbit.search.baselines import exhaustive_search, greedy_search, random_search
from lowbit.search.budget import Budget, BudgetExhausted, BudgetTracker
from lowbit.search.env import BitwidthEnv
from lowbit.search.evaluator import CachedEvaluator, Evaluator, check_accuracy
from lowbit.search.finetune import FineTuneEvaluator
from lowbit.search.hawq import hawq_search, solve_allocation
from lowbit.search.limits import CostBudget, SpaceCosts
from lowbit.search.outcome import EvalRecord, SearchOutcome, best_by_reward, hypervolume, pareto_front
from lowbit.search.reward import RewardConfig, plan_reward, releq_reward
from lowbit.search.sensitivity import Sensitivity, layer_sensitivity
from lowbit.search.space import Bits, Choices, LayerInfo, SearchSpace
from lowbit.search.synthetic import SyntheticEvaluator
from lowbit.search.tpe import tpe_search

__all__ = [
    "BitwidthEnv",
    "Bits",
    "Budget",
    "BudgetExhausted",
    "BudgetTracker",
    "CachedEvaluator",
    "Choices",
    "CostBudget",
    "EvalRecord",
    "Evaluator",
    "FineTuneEvaluator",
    "LayerInfo",
    "RewardConfig",
    "SearchOutcome",
    "SearchSpace",
    "Sensitivity",
    "SpaceCosts",
    "SyntheticEvaluator",
    "best_by_reward",
    "check_accuracy",
    "exhaustive_search",
    "greedy_search",
    "hawq_search",
    "hypervolume",
    "layer_sensitivity",
    "pareto_front",
    "plan_reward",
    "random_search",
    "releq_reward",
    "releq_search",
    "solve_allocation",
    "tpe_search",
]


def __getattr__(name: str) -> Any:
    """``releq_search`` (and ``PPOSettings``) load stable-baselines3: imported on first use only."""
    if name in ("releq_search", "PPOSettings"):
        from lowbit.search import releq

        return getattr(releq, name)
    raise AttributeError(f"module 'lowbit.search' has no attribute {name!r}")
