"""HAWQ-style bit allocation (issue 19; Yao et al., "HAWQ-V3: Dyadic Neural Network Quantization",
2021, section 3.3, with the sensitivity of Dong et al., "HAWQ-V2", 2020): an exact integer
program over the search space's choices, then the evaluator on its best candidates.

The program (:func:`solve_allocation`), with ``Ω(l, o)`` the cost of layer ``l`` at option ``o =
(w, a)`` (:func:`allocation_costs`) and ``x_{l,o}`` binary::

    minimise    Σ_{l,o} Ω(l, o) x_{l,o}
    subject to  Σ_o x_{l,o} = 1                 for every searched layer l (one option each)
                C_0 + Σ_{l,o} c(l, o) x_{l,o} <= B   the cost budget (lowbit.search.limits)

solved by SciPy's ``scipy.optimize.milp`` (HiGHS branch and bound; exact: the reported optimum
is optimal within HiGHS's default relative gap of 1e-4, on problems this small in practice exact,
which the tests check against exhaustive enumeration). ``c(l, o)`` are the exact additive
per-layer costs of :class:`~lowbit.search.limits.SpaceCosts`; the solution is rounded to 0/1 and
its cost recomputed exactly: if rounding ever put it over the budget, the budget row is tightened
by the excess and the program solved again.

``Ω(l, (w, a)) = ½ (max(tr H_l, ε)/n_l) ||Q_w(W_l) - W_l||² + act(l, a)`` from
:mod:`lowbit.search.sensitivity`; a Hutchinson trace that comes out negative (an untrained or
saddle-point model, or noise on a flat layer) is floored at ``ε = 1e-6 * max_l |tr H_l|`` so that
more perturbation never lowers the objective. ``act(l, a)`` is the activation proxy
(``Sensitivity.act_omega``, floored the same way) when the space searches activations, else 0.

Candidates (:func:`hawq_candidates`), evaluated in order through the search's cached evaluator
until the evaluation budget is spent:

- ``"kbest"`` (default): the optimum, then the next best plans under the same budget, each found
  by solving again with the plans found so far excluded (one "no-good" cut each:
  ``Σ_{(l,o) in plan} x_{l,o} <= L - 1``);
- ``"sweep"``: the optimum under the budget, then the optima under ``k - 1`` smaller budgets
  evenly spaced from it (or from the dearest plan's cost, when that is lower) down to the
  cheapest plan's cost (a Pareto sweep of the proxy), duplicates dropped and the rest filled with
  k-best plans under the full budget.

``max_evals = 1`` evaluates the optimum only (the plain HAWQ plan, whose accuracy is then known).
The outcome's best plan is, as for every strategy, the evaluated one with the highest ReLeQ reward
(all candidates are within the budget). Evaluations are deterministic and the program too, so a
resumed search replays the same candidates from the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lowbit.errors import ConfigError
from lowbit.search.baselines import _Run
from lowbit.search.budget import Budget
from lowbit.search.evaluator import Evaluator
from lowbit.search.limits import CostBudget, layer_options
from lowbit.search.outcome import SearchOutcome
from lowbit.search.parallel import ParallelEvaluator
from lowbit.search.reward import RewardConfig
from lowbit.search.sensitivity import Sensitivity
from lowbit.search.space import Bits, Choices, SearchSpace

CANDIDATES = ("kbest", "sweep")
TRACE_FLOOR = 1e-6


def allocation_costs(space: SearchSpace, sensitivity: Sensitivity) -> dict[str, dict[Bits, float]]:
    """``Ω(l, (w, a))`` for every searched layer and option (module docstring)."""
    missing = [name for name in space.searched_names if name not in sensitivity.layers]
    if missing:
        raise ConfigError(f"the sensitivity has no layer {missing[0]!r} of the search space")
    traces = [abs(sensitivity.layers[n].trace) for n in space.searched_names]
    acts = [abs(sensitivity.layers[n].act_trace or 0.0) for n in space.searched_names]
    floor_w = TRACE_FLOOR * max(traces) if max(traces) > 0 else 1e-30
    floor_a = TRACE_FLOOR * max(acts) if max(acts) > 0 else 1e-30
    out: dict[str, dict[Bits, float]] = {}
    for name in space.searched_names:
        layer = sensitivity.layers[name]
        mean_w = max(layer.trace, floor_w) / layer.params
        out[name] = {}
        for w, a in layer_options(space, name):
            if w not in layer.perturbation:
                raise ConfigError(f"the sensitivity of {name!r} has no perturbation at {w} bits")
            cost = 0.5 * mean_w * layer.perturbation[w]
            if space.act_searched(name):
                if layer.act_perturbation is None or a not in layer.act_perturbation or not layer.act_elements:
                    raise ConfigError(f"the sensitivity of {name!r} has no activation perturbation at {a} bits: "
                                      "measure it on the space that searches activations")
                cost += 0.5 * max(layer.act_trace or 0.0, floor_a) / layer.act_elements * layer.act_perturbation[a]
            out[name][(w, a)] = cost
    return out


class Allocation:
    """The integer program of one space, objective and cost budget (module docstring)."""

    def __init__(self, space: SearchSpace, objective: dict[str, dict[Bits, float]], budget: CostBudget) -> None:
        self.space, self.budget = space, budget
        self.options = [layer_options(space, name) for name in space.searched_names]
        self.index: list[tuple[int, Bits]] = [(i, o) for i, opts in enumerate(self.options) for o in opts]
        self.c = np.array([objective[space.searched_names[i]][o] for i, o in self.index], dtype=np.float64)
        if not np.all(np.isfinite(self.c)):
            raise ConfigError("the allocation objective has a non-finite value: check the sensitivity")
        costs = budget.costs
        self.row = np.array([costs.share(budget.kind, space.searched_names[i], o) for i, o in self.index],
                            dtype=np.float64)
        self.constant = costs.constants[budget.kind]
        self.onehot = np.zeros((space.n_searched, len(self.index)))
        for j, (i, _) in enumerate(self.index):
            self.onehot[i, j] = 1.0
        self.cuts: list[np.ndarray] = []

    def objective(self, choices: Sequence[Bits]) -> float:
        plan = self.space.normalize(choices)
        return float(sum(self.c[self.index.index((i, bits))] for i, bits in enumerate(plan)))

    def solve(self, limit: float | None = None) -> Choices | None:
        """The optimum under ``limit`` (default: the budget's value) with the cuts added so far, or
        None when no plan is left."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        value = self.budget.value if limit is None else limit
        scale = max(float(np.abs(self.row).max()), 1e-12)
        slack = (value * (1 + 1e-9) - self.constant) / scale
        for _ in range(20):
            constraints = [LinearConstraint(self.onehot, 1.0, 1.0),
                           LinearConstraint(self.row[None, :] / scale, -np.inf, slack)]
            constraints += [LinearConstraint(cut[None, :], -np.inf, self.space.n_searched - 1) for cut in self.cuts]
            result = milp(self.c, integrality=np.ones_like(self.c), bounds=Bounds(0.0, 1.0), constraints=constraints)
            if result.status == 2:  # infeasible
                return None
            if result.x is None or not result.success:
                raise ConfigError(f"the allocation program could not be solved: {result.message}")
            x = np.round(result.x)
            plan = self._plan(x)
            cost = self.budget.costs.cost(self.budget.kind, plan)
            if cost <= value * (1 + 1e-9):
                return plan
            slack -= (cost - value) / scale  # rounding crossed the budget: tighten and solve again
        raise ConfigError("the allocation program's solutions keep crossing the budget after rounding")

    def _plan(self, x: np.ndarray) -> Choices:
        chosen: list[Bits | None] = [None] * self.space.n_searched
        for j, (i, option) in enumerate(self.index):
            if x[j] > 0.5:
                chosen[i] = option
        if any(c is None for c in chosen):
            raise ConfigError("the allocation program returned a plan without an option for every layer")
        return self.space.normalize(chosen)  # type: ignore[arg-type]

    def exclude(self, plan: Sequence[Bits]) -> None:
        """Add a no-good cut: the program no longer returns ``plan``."""
        cut = np.zeros(len(self.index))
        for i, bits in enumerate(self.space.normalize(plan)):
            cut[self.index.index((i, bits))] = 1.0
        self.cuts.append(cut)


def solve_allocation(space: SearchSpace, objective: dict[str, dict[Bits, float]], budget: CostBudget) -> Choices:
    """The plan minimising ``Σ Ω`` within the cost budget (module docstring)."""
    budget.check_feasible()
    plan = Allocation(space, objective, budget).solve()
    if plan is None:
        raise ConfigError(f"no plan is within the cost budget {budget.kind} <= {budget.value:g}")
    return plan


def hawq_candidates(space: SearchSpace, objective: dict[str, dict[Bits, float]], budget: CostBudget, k: int,
                    mode: str = "kbest") -> list[Choices]:
    """Up to ``k`` distinct plans within the budget, best first (module docstring)."""
    if mode not in CANDIDATES:
        raise ConfigError(f"unknown HAWQ candidates {mode!r}; choose one of {', '.join(CANDIDATES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    budget.check_feasible()
    plans: list[Choices] = []
    if mode == "sweep":
        sweep = Allocation(space, objective, budget)
        least = budget.costs.minimum(budget.kind)
        top = min(budget.value, budget.costs.maximum(budget.kind))  # a budget above the dearest plan binds nothing
        for limit in np.linspace(top, least, k) if k > 1 else [top]:
            plan = sweep.solve(max(float(limit), least))
            if plan is not None and plan not in plans:
                plans.append(plan)
    best = Allocation(space, objective, budget)
    for plan in plans:
        best.exclude(plan)
    while len(plans) < k:
        plan = best.solve()
        if plan is None:
            break
        plans.append(plan)
        best.exclude(plan)
    return plans


def hawq_search(space: SearchSpace, evaluator: Evaluator, sensitivity: Sensitivity, cost_budget: CostBudget,
                budget: Budget = Budget(), *, reward_config: RewardConfig = RewardConfig(),
                weighted_state: bool = False, acc_float: float | None = None, candidates: str = "kbest",
                max_candidates: int | None = None) -> SearchOutcome:
    """Evaluate HAWQ's candidates until the evaluation budget is spent (module docstring).

    ``max_candidates`` (default: ``budget.max_evals``, else 8) is how many plans the program lists."""
    if cost_budget is None:
        raise ConfigError("HAWQ needs a cost budget: --budget-bits, --budget-bytes or --budget-bops")
    run = _Run(space, evaluator, budget, reward_config, weighted_state, acc_float, cost_budget)
    objective = allocation_costs(space, sensitivity)
    k = max_candidates if max_candidates is not None else (budget.max_evals or 8)
    plans = hawq_candidates(space, objective, cost_budget, k, candidates)
    allocation = Allocation(space, objective, cost_budget)
    listed = [{"key": space.key(p), "objective": allocation.objective(p), "cost": cost_budget.cost(p)}
              for p in plans]
    if isinstance(run.ev, ParallelEvaluator) and run.ev.workers > 1:
        room = None if budget.max_evals is None else max(budget.max_evals - run.tracker.used_evals, 0)
        new = [p for p in plans if run.ev.lookup(p) is None]
        run.ev.prefetch(new if room is None else new[:room])
    stopped = "candidates evaluated"
    for plan in plans:
        if not run.can_visit(plan):
            stopped = "budget"
            break
        run.visit(plan)
    settings: dict[str, Any] = {"candidates": candidates, "listed": listed, "stopped": stopped,
                                "sensitivity": dict(sensitivity.settings)}
    return run.outcome("hawq", **settings)
