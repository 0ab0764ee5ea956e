"""TPE over the bit choices (issue 19): Optuna's ``TPESampler`` (Bergstra et al. 2011; Watanabe 2023)
through its ask-and-tell interface, as a comparator for ReLeQ (Elthakeb et al.), METHODS.md
section 5, under the same evaluator, cache, evaluation budget and reward as random search.

- One categorical parameter per searched field: ``w:<layer>`` over the weight bit choices and,
  when the space searches activations, ``a:<layer>`` over the activation choices (none for the
  first layer, whose input stays float). The objective, maximised, is the plan's ReLeQ reward
  (``plan_reward``), the one the outcome's best plan is chosen by.
- Each trial: ``study.ask(distributions)``; a plan over the cost budget (when there is one) is
  told reward -1 (the lowest the ReLeQ reward gives) without being evaluated and is not a record;
  a cached plan is told its reward for free; a new plan is evaluated when the evaluation budget
  admits one, else the search stops. A plan asked again is told again (TPE sees it twice).
- Stops on the evaluation budget, when every plan of the space (within the cost budget, when its
  count is known) has been seen, after ``max_trials`` trials, or after ``max_stall`` trials in a
  row that bring no new plan (TPE keeps proposing known plans once it has converged).
- Seeded (``TPESampler(seed=seed)``, ``n_startup_trials`` random trials first) and in-process: the
  sampler's choices depend only on the seed and the values told, so the trial sequence is
  deterministic.

Resume: the cache file holds every plan evaluated so far. A resumed search builds a fresh study
with the same seed and runs the same loop: the trials it replays ask the same plans (the same
seed, the same values told), and those are now cache hits, free and told the same rewards, so
the study is rebuilt trial by trial exactly as it was and then continues with new plans where
the interrupted run stopped; the evaluation budget it has left is ``max_evals`` minus the
evaluations in the cache (``lowbit.search.budget.remaining_budget``). The resumed search's
records, their order and rewards equal those of an uninterrupted search with the same total
budget. (Adding the cached records to a new study with ``study.add_trial`` would not: the
sampler would start from another history and another random state, so the resumed search would
diverge from the uninterrupted one.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lowbit.errors import ConfigError
from lowbit.search.baselines import _Run
from lowbit.search.budget import Budget
from lowbit.search.env import OVER_BUDGET_REWARD
from lowbit.search.evaluator import Evaluator
from lowbit.search.limits import CostBudget
from lowbit.search.outcome import SearchOutcome
from lowbit.search.reward import RewardConfig
from lowbit.search.space import Choices, SearchSpace

MAX_STALL = 200
N_STARTUP_TRIALS = 10


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs one INFO line per trial; keep it at warnings for the search, then restore."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def distributions(space: SearchSpace) -> dict[str, Any]:
    """The trial's parameters: ``w:<layer>`` (and ``a:<layer>``) categorical over the bit choices."""
    from optuna.distributions import CategoricalDistribution

    out: dict[str, Any] = {}
    for name in space.searched_names:
        out[f"w:{name}"] = CategoricalDistribution(list(space.bit_choices))
        if space.act_searched(name):
            out[f"a:{name}"] = CategoricalDistribution(list(space.act_choices))  # type: ignore[arg-type]
    return out


def choices_of(space: SearchSpace, params: dict[str, Any]) -> Choices:
    """A trial's parameters -> the space's choices."""
    plan = []
    for name in space.searched_names:
        fixed = space.act_choices[-1] if space.act_choices else space.act_bits  # the first layer's: normalized to 32
        a = params.get(f"a:{name}", fixed)
        plan.append((int(params[f"w:{name}"]), int(a)))
    return space.normalize(plan)


def tpe_search(space: SearchSpace, evaluator: Evaluator, budget: Budget = Budget(), seed: int = 0, *,
               reward_config: RewardConfig = RewardConfig(), weighted_state: bool = False,
               acc_float: float | None = None, cost_budget: CostBudget | None = None,
               n_startup_trials: int = N_STARTUP_TRIALS, max_trials: int | None = None,
               max_stall: int = MAX_STALL) -> SearchOutcome:
    """TPE trials until the budget is spent (module docstring)."""
    import optuna

    for name, value in (("n_startup_trials", n_startup_trials), ("max_stall", max_stall)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    run = _Run(space, evaluator, budget, reward_config, weighted_state, acc_float, cost_budget)
    if max_trials is None and budget.max_evals is not None:
        max_trials = 50 * budget.max_evals + max_stall
    distinct = space.n_plans if cost_budget is None else cost_budget.count_within()
    dists = distributions(space)
    trials = over = stall = 0
    stopped = "space exhausted"
    with _quiet_optuna():
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        while distinct is None or len(run.records) < distinct:
            if max_trials is not None and trials >= max_trials:
                stopped = "max_trials"
                break
            if stall >= max_stall:
                stopped = "stalled"
                break
            trial = study.ask(dists)
            choices = choices_of(space, trial.params)
            trials += 1
            if not run.within(choices):
                study.tell(trial, OVER_BUDGET_REWARD)
                over += 1
                stall += 1
                continue
            if not run.can_visit(choices):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                stopped = "budget"
                break
            before = len(run.records)
            record = run.visit(choices)
            assert record.reward is not None
            study.tell(trial, record.reward)
            stall = 0 if len(run.records) > before else stall + 1
    settings: dict[str, Any] = {"seed": seed, "trials": trials, "n_startup_trials": n_startup_trials,
                                "sampler": f"optuna {optuna.__version__} TPESampler", "stopped": stopped}
    if cost_budget is not None:
        settings["over_budget_trials"] = over
    return run.outcome("tpe", **settings)
