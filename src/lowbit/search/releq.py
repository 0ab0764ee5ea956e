"""ReLeQ's agent (Elthakeb et al., "ReLeQ: A Reinforcement Learning Approach for Deep Quantization
of Neural Networks"), METHODS.md section 5: PPO over the bitwidth environment.

The only module of lowbit that imports stable-baselines3 / sb3-contrib. ``policy="mlp"`` is
stable-baselines3's PPO with an MLP actor-critic; ``policy="lstm"`` is sb3-contrib's RecurrentPPO
(``MlpLstmPolicy``), the paper's LSTM policy. Standard multi-epoch PPO, hyperparameters in
:class:`PPOSettings` (recorded in the outcome); the released code's values (clip 0.3, entropy
0.01, γ 0.9, Adam 1e-4) are not the defaults because it effectively did one actor-critic step per
episode.

Training runs in chunks of one rollout (``episodes_per_update`` whole episodes, so every chunk
ends at an episode boundary): after each chunk the agent's weights and optimizer
(``get_parameters``), its step count, the environments and every RNG (torch, numpy, python) are
written to ``state_dir/releq_state.ckpt`` (atomic, checksummed). ``resume=True`` loads it into a
fresh agent (``set_parameters``); its first ``learn`` resets the environments, which is where the
saved chunk left them (at the start of an episode), so nothing of the rollout cursor needs saving.
Plans evaluated after the last chunk are in the evaluator's on-disk cache, so a search killed at
any point resumes and ends with the same plans, rewards and counts as an uninterrupted one (on CPU).

Only stable-baselines3's public API is used (``learn(reset_num_timesteps=False, callback=...)``,
``num_timesteps``, ``get_parameters``/``set_parameters``, ``set_logger``, ``BaseCallback``). The
agent logs nowhere: it gets a logger without outputs, because SB3's default one (``configure()``
with no folder) creates an empty ``SB3-<date>`` folder in the temp directory at every ``learn``.

Budget: ``max_evals`` counts the distinct plans this search visits (a plan another search put in
the shared cache still counts once here, so strategies compare at equal plan counts; the
``evaluations`` of the outcome are the ones paid for, plans that were not in the cache when the
search started). When the next new plan would exceed the budget, the search stops; an agent that
keeps revisiting known plans is stopped by ``max_episodes``.

Parallel evaluation (``n_envs > 1``, by default the ``workers`` of a
:class:`~lowbit.search.parallel.ParallelEvaluator`): ``n_envs`` environments step in lockstep
(a ``DummyVecEnv`` subclass); every episode has the same length, so they finish together and the
plans they finish are evaluated as one batch in the evaluator's worker processes before they
step (only the plans the budget gate would admit, so the budget stays exact). Each env plays
``episodes_per_update / n_envs`` episodes per rollout (it must divide), so a rollout holds the
same number of episodes from the same policy as the serial agent: the same PPO, with actions
drawn in another order, so results depend on ``n_envs`` (reproducible for a given seed and
``n_envs``; ``lowbit.search.parallel`` discusses it). The saved state records ``n_envs``; a
search resumes only with the same number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from lowbit.errors import ConfigError
from lowbit.search.budget import Budget, BudgetExhausted
from lowbit.search.env import BitwidthEnv
from lowbit.search.observation import DEFAULT_STATE
from lowbit.search.sensitivity import Sensitivity
from lowbit.search.evaluator import CachedEvaluator, Evaluator, check_accuracy
from lowbit.search.limits import CostBudget
from lowbit.search.outcome import EvalRecord, SearchOutcome
from lowbit.search.parallel import ParallelEvaluator
from lowbit.search.reward import RewardConfig
from lowbit.search.space import Choices, SearchSpace
from lowbit.search.releq_state import STATE_FILE, load_state, restore, save

POLICIES = ("mlp", "lstm")


@dataclass(frozen=True)
class PPOSettings:
    """PPO hyperparameters (one rollout = ``episodes_per_update`` episodes of L steps)."""

    policy: str = "mlp"
    episodes_per_update: int = 8
    minibatches: int = 2  # per epoch; batch size = rollout length / minibatches
    n_epochs: int = 10
    learning_rate: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    hidden: tuple[int, ...] = (64, 64)
    lstm_hidden: int = 32

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown ReLeQ policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        for name in ("episodes_per_update", "minibatches", "n_epochs", "lstm_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PPO {name} must be an integer >= 1, got {value!r}")
        for name in ("learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"PPO {name} must be a finite number >= 0, got {value!r}")
        if not self.learning_rate > 0 or not 0 < self.gamma <= 1 or not 0 < self.gae_lambda <= 1:
            raise ConfigError("PPO needs learning_rate > 0 and gamma, gae_lambda in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}


class _Gate:
    """The evaluator as the environment sees it: counts distinct plans and enforces the budget."""

    def __init__(self, space: SearchSpace, evaluator: CachedEvaluator, budget: Budget, visited: list[str],
                 elapsed_before: float, cost_budget: CostBudget | None = None) -> None:
        self.space, self.evaluator, self.budget = space, evaluator, budget
        self.cost_budget = cost_budget
        self.visited, self.seen = visited, set(visited)
        self.start = time.perf_counter() - elapsed_before

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _refusal(self, visited: int) -> str | None:
        """Why the budget admits no new plan after ``visited`` distinct ones (None: it admits one)."""
        if self.budget.max_evals is not None and visited >= self.budget.max_evals:
            return f"{self.budget.max_evals} plans evaluated"
        if self.budget.time_limit_s is not None and self.elapsed() >= self.budget.time_limit_s:
            return f"time limit of {self.budget.time_limit_s} s reached"
        return None

    def float_accuracy(self) -> float:
        return self.evaluator.float_accuracy()

    def __call__(self, choices: Choices) -> float:
        key = self.space.key(choices)
        if key not in self.seen:
            refusal = self._refusal(len(self.visited))
            if refusal is not None:
                raise BudgetExhausted(refusal)
            self.seen.add(key)
            self.visited.append(key)
        return self.evaluator(choices)

    def prefetch(self, plans: list[Choices | None]) -> None:
        """Evaluate as one batch the finished plans (None: an episode still running) that
        :meth:`__call__` will admit, in env order, when the environments step."""
        if not isinstance(self.evaluator, ParallelEvaluator):
            return
        admitted, seen, visited = [], set(self.seen), len(self.visited)
        for choices in plans:
            if choices is None or (self.cost_budget is not None and not self.cost_budget.allows(choices)):
                continue  # still running, or over the cost budget (the environment does not evaluate it)
            key = self.space.key(choices)
            if key not in seen:
                if self._refusal(visited) is not None:
                    break
                seen.add(key)
                visited += 1
            admitted.append(choices)
        self.evaluator.prefetch(admitted)


class _LockstepVecEnv(DummyVecEnv):
    """``n_envs`` bitwidth environments stepped together; the plans a step finishes are evaluated
    as one batch (:meth:`_Gate.prefetch`) before the environments step (module docstring)."""

    def __init__(self, envs: list[BitwidthEnv], gate: _Gate) -> None:
        super().__init__([(lambda e=e: e) for e in envs])
        self.gate = gate

    def step_wait(self) -> Any:
        plans: list[Choices | None] = []
        for env, action in zip(self.envs, self.actions):
            state = env.get_state()
            if state["index"] == env.n_layers - 1:
                last = env.space.decode(int(np.asarray(action).reshape(-1)[0]))
                plans.append(env.space.normalize([tuple(c) for c in state["chosen"]] + [last]))
            else:
                plans.append(None)
        self.gate.prefetch(plans)
        return super().step_wait()


class _Episodes(BaseCallback):
    """Collects every finished episode's info (plan, accuracy, reward)."""

    def __init__(self, sink: list[dict[str, Any]], on_episode: Callable[[dict[str, Any]], None] | None) -> None:
        super().__init__()
        self.sink, self.on_episode = sink, on_episode

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            if done and "plan_key" in info:
                self.sink.append({k: info[k] for k in ("plan_key", "accuracy", "avg_bits", "reward")})
                if self.on_episode is not None:
                    self.on_episode(self.sink[-1])
        return True


def _make_agent(env: DummyVecEnv, space: SearchSpace, ppo: PPOSettings, seed: int):
    n_steps = ppo.episodes_per_update // env.num_envs * space.n_searched  # per env
    batch = max(1, n_steps * env.num_envs // ppo.minibatches)
    common = dict(n_steps=n_steps, batch_size=batch, n_epochs=ppo.n_epochs, learning_rate=ppo.learning_rate,
                  gamma=ppo.gamma, gae_lambda=ppo.gae_lambda, clip_range=ppo.clip_range, ent_coef=ppo.ent_coef,
                  seed=seed, device="cpu", verbose=0)
    if ppo.policy == "lstm":
        from sb3_contrib import RecurrentPPO

        agent = RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=dict(net_arch=list(ppo.hidden),
                                                                      lstm_hidden_size=ppo.lstm_hidden), **common)
    else:
        agent = PPO("MlpPolicy", env, policy_kwargs=dict(net_arch=list(ppo.hidden)), **common)
    # No outputs, no folder: without a logger of its own, every learn() calls SB3's configure(),
    # which makes an (empty, at verbose=0) tempdir/SB3-<date> folder.
    agent.set_logger(Logger(folder=None, output_formats=[]))
    return agent


@dataclass
class _Progress:
    episodes: list[dict[str, Any]] = field(default_factory=list)
    visited: list[str] = field(default_factory=list)
    preexisting: set[str] = field(default_factory=set)
    elapsed_s: float = 0.0


def releq_search(space: SearchSpace, evaluator: Evaluator, budget: Budget = Budget(), seed: int = 0, *,
                 reward_config: RewardConfig = RewardConfig(), ppo: PPOSettings = PPOSettings(),
                 weighted_state: bool = False, acc_float: float | None = None, state_dir: str | Path | None = None,
                 resume: bool = False, max_episodes: int | None = None, stop_after_updates: int | None = None,
                 n_envs: int | None = None, on_episode: Callable[[dict[str, Any]], None] | None = None,
                 cost_budget: CostBudget | None = None, state: str = DEFAULT_STATE,
                 sensitivity: Sensitivity | None = None) -> SearchOutcome:
    """Search per-layer bits with PPO until the budget is spent (module docstring).

    ``on_episode`` is called with each finished episode's plan key, accuracy, average bits and
    reward (progress display). ``n_envs``: environments stepped in lockstep (default: the evaluator's ``workers`` for a
    :class:`ParallelEvaluator`, else 1); ``ppo.episodes_per_update`` must be a multiple of it.

    ``stop_after_updates`` ends this call after that many PPO updates, state saved (used to test
    that an interrupted search resumes exactly); the outcome then has ``settings["stopped"] =
    "interrupted"``.

    ``cost_budget``: plans over it end their episode with reward -1 without being evaluated
    (``lowbit.search.env``); they are not records, so the best plan is within the budget.

    ``state``: the agent's observation, ``"informative"`` (needs ``sensitivity``) or ``"paper"``
    (``lowbit.search.observation``).
    """
    cached = evaluator if isinstance(evaluator, CachedEvaluator) else CachedEvaluator(evaluator, space)
    acc_float = check_accuracy(cached.float_accuracy() if acc_float is None else acc_float, "float model")
    if max_episodes is None:
        max_episodes = 50 * budget.max_evals if budget.max_evals is not None else None
    if max_episodes is None and budget.time_limit_s is None:
        raise ConfigError("ReLeQ needs a limit: max_evals, a time limit or max_episodes")
    n_envs = _check_envs(cached, ppo, n_envs)
    state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    resume_state = load_state(state_path, n_envs) if resume else None

    progress = _Progress(preexisting={r.key for r in cached.records})
    if resume_state is not None:
        progress = _Progress(list(resume_state["episodes"]), list(resume_state["visited"]),
                             set(resume_state["preexisting"]), float(resume_state["elapsed_s"]))
    if cost_budget is not None:
        cost_budget.check_feasible()
    gate = _Gate(space, cached, budget, progress.visited, progress.elapsed_s, cost_budget)
    envs = [BitwidthEnv(space, gate, reward_config=reward_config, weighted_state=weighted_state,
                        acc_float=acc_float, cost_budget=cost_budget, state=state, sensitivity=sensitivity)
            for _ in range(n_envs)]
    env = envs[0]
    vec = DummyVecEnv([lambda: env]) if n_envs == 1 else _LockstepVecEnv(envs, gate)
    agent = _make_agent(vec, space, ppo, seed)
    updates = 0
    if resume_state is not None:
        restore(agent, envs, resume_state, state_path)
        updates = int(resume_state["updates"])

    stopped, updates = _train(agent, envs, progress, gate, budget, _Episodes(progress.episodes, on_episode),
                              updates, max_episodes, stop_after_updates, state_path)
    outcome = _outcome(space, cached, acc_float, reward_config, progress, gate, ppo, seed, budget, stopped, updates,
                       weighted_state, n_envs)
    outcome.settings["state"] = state
    if cost_budget is not None:
        outcome.settings["cost_budget"] = cost_budget.to_dict()
        outcome.settings["over_budget_episodes"] = sum(1 for e in progress.episodes if e.get("accuracy") is None)
    return outcome


def _train(agent: Any, envs: list[BitwidthEnv], progress: _Progress, gate: _Gate, budget: Budget,
           callback: BaseCallback, updates: int, max_episodes: int | None, stop_after_updates: int | None,
           state_path: Path | None) -> tuple[str, int]:
    """PPO updates (one rollout each), the state saved after each, until a limit: (why, updates)."""
    this_call = 0
    while True:
        stopped = _stop_reason(progress, gate, budget, max_episodes, stop_after_updates, this_call)
        if stopped is not None:
            return stopped, updates
        try:
            agent.learn(total_timesteps=agent.n_steps * len(envs), reset_num_timesteps=False, callback=callback)
        except BudgetExhausted:
            return "budget", updates
        updates, this_call = updates + 1, this_call + 1
        if state_path is not None:
            save(state_path, agent, envs, updates, {"episodes": progress.episodes, "visited": progress.visited,
                                                    "preexisting": sorted(progress.preexisting),
                                                    "elapsed_s": gate.elapsed()})


def _check_envs(cached: CachedEvaluator, ppo: PPOSettings, n_envs: int | None) -> int:
    """The environments stepped in lockstep: the parallel evaluator's workers by default."""
    if n_envs is None:
        n_envs = cached.workers if isinstance(cached, ParallelEvaluator) else 1
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ConfigError(f"n_envs must be an integer >= 1, got {n_envs!r}")
    if ppo.episodes_per_update % n_envs:
        raise ConfigError(f"PPO episodes_per_update ({ppo.episodes_per_update}) must be a multiple of the "
                          f"{n_envs} environments (--workers) that play them")
    return n_envs


def _stop_reason(progress: _Progress, gate: _Gate, budget: Budget, max_episodes: int | None,
                 stop_after_updates: int | None, this_call: int) -> str | None:
    """Why the search stops before its next rollout (None: it goes on; the evaluation budget stops it
    inside a rollout instead)."""
    if max_episodes is not None and len(progress.episodes) >= max_episodes:
        return "max_episodes"
    if budget.time_limit_s is not None and gate.elapsed() >= budget.time_limit_s:
        return "time_limit"
    if stop_after_updates is not None and this_call >= stop_after_updates:
        return "interrupted"
    return None


def _outcome(space: SearchSpace, cached: CachedEvaluator, acc_float: float, reward_config: RewardConfig,
             progress: _Progress, gate: _Gate, ppo: PPOSettings, seed: int, budget: Budget, stopped: str,
             updates: int, weighted_state: bool, n_envs: int = 1) -> SearchOutcome:
    rewards = {e["plan_key"]: e["reward"] for e in progress.episodes}
    records: list[EvalRecord] = []
    for key in progress.visited:
        record = cached.lookup(space.choices_from_key(key))
        if record is not None and key in rewards:
            records.append(record.with_reward(rewards[key]))
    paid = sum(1 for key in progress.visited if key not in progress.preexisting)
    over = sum(1 for e in progress.episodes if e.get("accuracy") is None)  # over the cost budget: not evaluated
    return SearchOutcome(strategy="releq", records=records, evaluations=paid,
                         cache_hits=len(progress.episodes) - paid - over, wall_s=gate.elapsed(), acc_float=acc_float,
                         reward_config=reward_config.to_dict(),
                         settings={"budget": budget.to_dict(), "weighted_state": weighted_state, "seed": seed,
                                   "ppo": ppo.to_dict(), "n_envs": n_envs, "episodes": len(progress.episodes),
                                   "updates": updates,
                                   "episode_rewards": [e["reward"] for e in progress.episodes],
                                   "episode_plans": [e["plan_key"] for e in progress.episodes],
                                   "stopped": stopped})
