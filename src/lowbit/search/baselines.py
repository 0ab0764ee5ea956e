"""Comparators for ReLeQ (Elthakeb et al.), METHODS.md section 5: random search and greedy
layer-by-layer descent (and exhaustive search for small spaces), under the same evaluator, cache,
budget and reward (``plan_reward``, the ReLeQ terminal reward) as the agent.

- :func:`random_search`: draw every searched layer's action uniformly (``numpy`` generator
  seeded with ``seed``) and evaluate the plan; stop when the budget is spent (checked before each
  new evaluation; cached plans are free), when every distinct plan of the space has been seen, or
  after ``max_draws`` draws.
- :func:`greedy_search`: start with every searched layer at its largest bits; for each layer in
  order, lower its weight bits one choice at a time (then its activation bits, when searched),
  accepting a step while the plan's accuracy stays at or above ``th * acc_float`` and its reward
  is not lower than the best accepted so far (ties accepted: fewer bits at equal reward); the
  first rejected step ends that layer. ``passes > 1`` repeats the sweep (only lowering) until a
  sweep changes nothing.
- :func:`exhaustive_search`: every distinct plan, in ``itertools.product`` order (tests and
  small spaces: ``space.n_plans`` evaluations).

Each returns a :class:`SearchOutcome`; ``settings["stopped"]`` says why it ended.

Cost budget (``cost_budget``, a :class:`~lowbit.search.limits.CostBudget`: "the best plan under
B"; none by default, and then nothing below applies and the searches are exactly as above). A
plan over the budget is never evaluated and never a record, so the best plan is within it:

- random search redraws (rejection sampling: the plans it visits are uniform over the plans
  within the budget; the draws it rejects are counted in ``settings["rejected"]`` and cost no
  evaluation). It stops when every plan within the budget has been seen (counted by
  ``CostBudget.count_within``; when that count is out of reach, after ``max_stall`` draws in a
  row that bring no new plan), or after ``max_stall`` rejections in a row ("no plan within the
  cost budget");
- greedy descent starts from the uniform plan with the most bits within the budget
  (``CostBudget.largest_uniform``) instead of the largest bits; its steps only lower bits, and
  every cost falls or stays when bits fall, so it stays within (a step over it would be rejected);
- exhaustive search skips the plans over the budget.

Given a :class:`~lowbit.search.parallel.ParallelEvaluator` with ``workers > 1``, random and
exhaustive search draw plans ahead and evaluate the new ones in batches in its worker processes,
with the same outcome as the serial search (plans, order, counts, budget); greedy descent stays
serial (``lowbit.search.parallel`` says why).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from lowbit.errors import ConfigError
from lowbit.search.budget import Budget
from lowbit.search.evaluator import CachedEvaluator, Evaluator, check_accuracy
from lowbit.search.limits import CostBudget
from lowbit.search.outcome import EvalRecord, SearchOutcome
from lowbit.search.parallel import ParallelEvaluator
from lowbit.search.reward import RewardConfig, plan_reward
from lowbit.search.space import Bits, ChoiceLike, Choices, SearchSpace

MAX_STALL = 10_000  # with a cost budget: draws in a row without a new plan (or within the budget) before stopping


class _Plans:
    """The plans a serial search loop visits, in order, from ``draw`` (a generator of plans or
    None when there are no more), with a look-ahead: :meth:`prefetch` draws the plans the loop
    would visit next until ``size`` of them are new (not cached) and evaluates those as one
    batch. ``distinct_cap`` is where the loop stops on distinct plans visited (random search:
    every plan of the space); ``max_plans`` bounds how many plans it takes in all (``max_draws``)."""

    def __init__(self, run: _Run, draw: Callable[[], Choices | None], distinct_cap: int | None = None,
                 max_plans: int | None = None) -> None:
        self.run, self.draw = run, draw
        self.distinct_cap, self.max_plans = distinct_cap, max_plans
        self.ahead: deque[Choices] = deque()
        self.taken = 0

    def next(self) -> Choices | None:
        plan = self.ahead.popleft() if self.ahead else self.draw()
        if plan is not None:
            self.taken += 1
        return plan

    def prefetch(self, first: Choices) -> None:
        """``first`` (just taken) is new and the loop is about to pay for it (module docstring)."""
        size = self.run.batch_size()
        if size == 0:  # serial; a batch of 1 still goes to a worker (the same thread count for every plan)
            return
        space, ev = self.run.space, self.run.ev
        seen = set(self.run.records)
        batch = [first]
        new = {space.key(first)}
        seen.add(space.key(first))
        for plan in self.ahead:  # already drawn (a batch ended early): they come first
            key = space.key(plan)
            seen.add(key)
            if key not in new and ev.lookup(plan) is None:
                new.add(key)
                batch.append(plan)
        while len(new) < size and (self.distinct_cap is None or len(seen) < self.distinct_cap) \
                and (self.max_plans is None or self.taken + len(self.ahead) < self.max_plans):
            plan = self.draw()
            if plan is None:
                break
            self.ahead.append(plan)
            key = space.key(plan)
            seen.add(key)
            if key not in new and ev.lookup(plan) is None:
                new.add(key)
                batch.append(plan)
        assert isinstance(ev, ParallelEvaluator)
        ev.prefetch(batch[:size])


class _Run:
    """One search's bookkeeping: its records (with rewards), new evaluations and cache hits."""

    def __init__(self, space: SearchSpace, evaluator: Evaluator, budget: Budget, reward_config: RewardConfig,
                 weighted_state: bool, acc_float: float | None, cost_budget: CostBudget | None = None) -> None:
        self.space = space
        self.cost_budget = cost_budget
        if cost_budget is not None:
            if cost_budget.space.to_dict() != space.to_dict():
                raise ConfigError("the cost budget was built for another search space")
            cost_budget.check_feasible()
        self.ev = evaluator if isinstance(evaluator, CachedEvaluator) else CachedEvaluator(evaluator, space)
        self.reward_config = reward_config
        self.weighted_state = weighted_state
        self.acc_float = check_accuracy(self.ev.float_accuracy() if acc_float is None else acc_float, "float model")
        self.budget = budget
        self.tracker = budget.start(self.ev)
        self.hits0 = self.ev.cache_hits
        self.records: dict[str, EvalRecord] = {}
        self.t0 = time.perf_counter()

    def can_visit(self, choices: Sequence[ChoiceLike]) -> bool:
        return self.ev.is_cached(choices) or not self.tracker.exhausted()

    def within(self, choices: Sequence[ChoiceLike]) -> bool:
        """Whether the plan is within the cost budget (always, without one)."""
        return self.cost_budget is None or self.cost_budget.allows(choices)

    def visit(self, choices: Sequence[ChoiceLike]) -> EvalRecord:
        if not self.within(choices):
            raise ConfigError(f"plan {self.space.key(choices)} is over the cost budget; it must not be evaluated")
        record = self.ev.evaluate(choices)
        reward = plan_reward(self.space, record.choices, record.accuracy, self.acc_float, self.reward_config,
                             self.weighted_state, self.cost_budget)
        record = record.with_reward(reward)
        self.records.setdefault(record.key, record)
        return record

    def batch_size(self) -> int:
        """How many new plans to evaluate together: the pool's workers, at most the evaluations the
        budget has left; 0 without a pool (serial)."""
        if not isinstance(self.ev, ParallelEvaluator) or self.ev.workers < 2:
            return 0
        if self.budget.max_evals is None:
            return self.ev.workers
        return max(1, min(self.ev.workers, self.budget.max_evals - self.tracker.used_evals))

    def outcome(self, strategy: str, **settings: Any) -> SearchOutcome:
        if self.cost_budget is not None:
            settings = {"cost_budget": self.cost_budget.to_dict(), **settings}
        return SearchOutcome(strategy=strategy, records=list(self.records.values()),
                             evaluations=self.tracker.used_evals, cache_hits=self.ev.cache_hits - self.hits0,
                             wall_s=time.perf_counter() - self.t0, acc_float=self.acc_float,
                             reward_config=self.reward_config.to_dict(),
                             settings={"budget": self.budget.to_dict(), "weighted_state": self.weighted_state,
                                       **settings})


def random_search(space: SearchSpace, evaluator: Evaluator, budget: Budget = Budget(), seed: int = 0, *,
                  reward_config: RewardConfig = RewardConfig(), weighted_state: bool = False,
                  acc_float: float | None = None, max_draws: int | None = None,
                  cost_budget: CostBudget | None = None, max_stall: int = MAX_STALL) -> SearchOutcome:
    """Uniform random plans until the budget is spent (module docstring)."""
    run = _Run(space, evaluator, budget, reward_config, weighted_state, acc_float, cost_budget)
    rng = np.random.default_rng(seed)
    rejected = [0, 0]  # in all, in a row

    def draw() -> Choices | None:
        while True:
            actions = rng.integers(0, space.n_actions, size=space.n_searched)
            plan = space.normalize([space.decode(int(a)) for a in actions])
            if run.within(plan):
                rejected[1] = 0
                return plan
            rejected[0] += 1
            rejected[1] += 1
            if rejected[1] >= max_stall:
                return None

    distinct = space.n_plans if cost_budget is None else cost_budget.count_within()
    plans = _Plans(run, draw, distinct_cap=distinct, max_plans=max_draws)
    stopped = "space exhausted"
    stall = 0
    while distinct is None or len(run.records) < distinct:
        if max_draws is not None and plans.taken >= max_draws:
            stopped = "max_draws"
            break
        choices = plans.next()
        if choices is None:
            stopped = "no plan within the cost budget"
            break
        if not run.can_visit(choices):
            stopped = "budget"
            break
        if not run.ev.is_cached(choices):
            plans.prefetch(choices)
        before = len(run.records)
        run.visit(choices)
        stall = 0 if len(run.records) > before else stall + 1
        if cost_budget is not None and stall >= max_stall:
            stopped = "stalled"
            break
    if cost_budget is None:
        return run.outcome("random", seed=seed, draws=plans.taken, stopped=stopped)
    return run.outcome("random", seed=seed, draws=plans.taken, rejected=rejected[0], stopped=stopped)


def greedy_search(space: SearchSpace, evaluator: Evaluator, budget: Budget = Budget(), *,
                  reward_config: RewardConfig = RewardConfig(), weighted_state: bool = False,
                  acc_float: float | None = None, passes: int = 1,
                  cost_budget: CostBudget | None = None) -> SearchOutcome:
    """Layer-by-layer descent from the largest bits (within the cost budget; module docstring)."""
    run = _Run(space, evaluator, budget, reward_config, weighted_state, acc_float, cost_budget)
    current: list[Bits] = list(space.uniform() if cost_budget is None else cost_budget.largest_uniform())
    if not run.can_visit(current):
        return run.outcome("greedy", passes=passes, stopped="budget")
    best = run.visit(current)
    floor = reward_config.th * run.acc_float
    for _ in range(passes):
        changed = False
        for i, name in enumerate(space.searched_names):
            fields = (0, 1) if space.act_searched(name) else (0,)
            for field in fields:
                options = space.bit_choices if field == 0 else space.act_choices
                for bits in sorted((b for b in options if b < current[i][field]), reverse=True):
                    candidate = list(current)
                    candidate[i] = (bits, current[i][1]) if field == 0 else (current[i][0], bits)
                    if not run.within(candidate):  # cannot happen (fewer bits never cost more): rejected
                        break
                    if not run.can_visit(candidate):
                        return run.outcome("greedy", passes=passes, stopped="budget")
                    record = run.visit(candidate)
                    assert best.reward is not None and record.reward is not None
                    if record.accuracy < floor or record.reward < best.reward:
                        break
                    current, best, changed = candidate, record, True
        if not changed:
            break
    return run.outcome("greedy", passes=passes, stopped="converged")


def exhaustive_search(space: SearchSpace, evaluator: Evaluator, budget: Budget = Budget(), *,
                      reward_config: RewardConfig = RewardConfig(), weighted_state: bool = False,
                      acc_float: float | None = None, cost_budget: CostBudget | None = None) -> SearchOutcome:
    """Every distinct plan of the space (``space.n_plans`` of them; those within the cost budget),
    unless the budget ends it first."""
    run = _Run(space, evaluator, budget, reward_config, weighted_state, acc_float, cost_budget)
    fixed = space.act_bits
    per_layer = []
    for name in space.searched_names:
        acts = space.act_choices if space.act_searched(name) else (space.act_choices[-1] if space.search_acts
                                                                   else fixed,)
        per_layer.append([(w, a) for w in space.bit_choices for a in acts])
    product: Iterator[Choices] = (plan for plan in itertools.product(*per_layer) if run.within(plan))
    plans = _Plans(run, lambda: next(product, None))
    while (choices := plans.next()) is not None:
        if not run.can_visit(choices):
            return run.outcome("exhaustive", stopped="budget")
        if not run.ev.is_cached(choices):
            plans.prefetch(choices)
        run.visit(choices)
    return run.outcome("exhaustive", stopped="space exhausted")
