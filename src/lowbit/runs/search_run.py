"""``lowbit search`` / ``lowbit releq``: per-layer bitwidth search, ReLeQ (Elthakeb et al.), METHODS.md
section 5, and its comparators (random search, greedy descent, HAWQ's integer program over the
layers' sensitivity, Optuna's TPE), writing one run folder.

The Python entry point is :func:`run_search` with :class:`SearchOptions`. Steps:

1. Validate every option, load the data (``val_fraction`` of the train split held out as the
   validation split) and build the float model: ``init`` (a float run folder or model file), or
   a float model trained first into ``OUT/float`` (a run folder of its own, on the same train
   split minus validation). Nothing is written before all user errors are raised.
2. Search: the evaluator fine-tunes each plan ``eval_steps`` steps on ``eval_train_size`` train
   samples and measures validation accuracy (never test); it is cached in
   ``OUT/evaluations.jsonl``, so ``--resume`` reuses every evaluated plan (see
   ``lowbit.search.budget`` for the resumed budget). ReLeQ keeps its agent in ``OUT/agent``.
   With ``workers > 1`` random search and ReLeQ evaluate plans in that many worker processes
   (one torch thread each; ``lowbit.search.parallel``): random search ends with the same plans
   as the serial one (run at ``--threads 1``), ReLeQ runs that many environments in lockstep,
   HAWQ evaluates its candidates as one batch; greedy descent and TPE stay serial.
   ``executor="ray"`` sends the same evaluations to a Ray cluster (``ray_address``, else a private
   Ray instance of ``workers`` CPUs) instead of local processes, with the same results; the cache
   is still written by this process alone (``lowbit.executors``).
   A cost budget (``--budget-bits``, ``--budget-bytes`` or ``--budget-bops``, at most one;
   ``lowbit.search.limits``) applies to every strategy: no plan over it is evaluated or chosen;
   it is checked against the cheapest plan before anything is written. HAWQ needs one; it first
   measures the layers' sensitivity on the float model (``lowbit.search.sensitivity``: Hutchinson
   traces on ``hessian_batches`` batches of the evaluator's training subset) into
   ``OUT/sensitivity.json``, reused on resume when the float weights and settings match.
3. The best plan by reward is written to plan.json (one explicit entry per layer), fine-tuned
   from the float weights for ``finetune_epochs`` on the train split (minus validation), and
   evaluated once on the test split -> model.ckpt, result.json.

The run folder also holds config.yaml, metrics.jsonl (one ``phase: "search"`` line per plan the
search visited, in order, then one ``phase: "finetune"`` line per fine-tune epoch) and plots/
(rewards.png, bits.png, pareto.png).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.costs import model_compute_costs
from lowbit.errors import CheckpointError, ConfigError, LowbitError, unknown_name
from lowbit.health import check_health
from lowbit.io import atomic_write_text
from lowbit.nn import finetune_quantized, layer_bits, quantize_
from lowbit.plan import Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.recipes import QUANTIZED_FINETUNE, SEARCH_EVALUATION
from lowbit.report.search_plots import write_search_plots
from lowbit.runs.folder import CONFIG_FILE, PLAN_FILE, RunFolder
from lowbit.runs.lifecycle import StartedRun, start_run
from lowbit.runs.model_io import MODEL_FILE, load_float_weights, save_model
from lowbit.runs.options import ExecutorOptions, option, quantizer_names
from lowbit.runs.train_run import float_run_options, run_train
from lowbit.search import CachedEvaluator, FineTuneEvaluator, RewardConfig, SearchOutcome, SearchSpace
from lowbit.search.hawq import CANDIDATES as HAWQ_CANDIDATES
from lowbit.search.limits import CostBudget, SpaceCosts
from lowbit.search.observation import DEFAULT_STATE, STATES
from lowbit.search.parallel import ParallelEvaluator
from lowbit.search.sensitivity import SENSITIVITY_FILE, Sensitivity, load_or_compute
from lowbit.search.setup import LoggedEvaluator, evaluator_loaders, parse_bits
from lowbit.search.strategies import STRATEGIES, run_strategy, search_summary
from lowbit.train import MetricsWriter, Reporter, TrainConfig, evaluate

POLICIES = ("mlp", "lstm")
FLOAT_DIR, AGENT_DIR, CACHE_FILE = "float", "agent", "evaluations.jsonl"


@dataclass
class SearchOptions(ExecutorOptions):
    strategy: str = option("releq", "search strategy", choices=STRATEGIES)
    init: str | None = option(None, "float model to search on: a run folder or model file",
                              default_text="train one into OUT/float first")
    float_epochs: int = option(10, "float training epochs without --init", low=1)
    bit_choices: str = option("2,3,4,5,8", "weight bits to choose from", metavar="B,B,...")
    search_acts: bool = option(False, "search activation bits too (default: activations stay float)")
    act_choices: str | None = option(None, "activation bits with --search-acts", metavar="B,B,...",
                                     default_text="--bit-choices")
    pin_first_last: bool = option(True, "keep the first and last layers at 8 bits (--no-pin: search them too)",
                                  flag="--no-pin")
    weighted_state: bool = option(False, "weight the bits state (and reward) by parameter count")
    max_evals: int | None = option(60, "new plan evaluations (cached plans are free)", low=1, metavar="N")
    time_limit: float | None = option(None, "stop starting evaluations after S seconds", metavar="S")
    policy: str = option("mlp", "ReLeQ's PPO policy", choices=POLICIES)
    releq_state: str = option(DEFAULT_STATE, "ReLeQ's observation: informative (each layer's Hessian sensitivity, "
                              "the bits chosen so far, the budget they use) or paper (METHODS.md's 8 features)",
                              choices=STATES)
    reward_th: float = option(0.4, "reward: accuracy threshold th")
    reward_a: float = option(0.8, "reward: bits exponent a")
    reward_b: float = option(1.0, "reward: accuracy exponent b")
    eval_steps: int = option(200, "fine-tune steps per evaluated plan", low=0)
    eval_train_size: int = option(2000, "training samples the evaluator fine-tunes on", low=1)
    eval_lr: float = option(SEARCH_EVALUATION.lr, "the evaluator's learning rate (lowbit.recipes)")
    val_fraction: float = option(0.2, "share of the train split held out to measure plans (never test)")
    finetune_epochs: int = option(10, "full fine-tune of the best plan", low=0)
    finetune_lr: float = option(QUANTIZED_FINETUNE.lr, "its learning rate (lowbit.recipes)")
    workers: int = option(1, "evaluate plans in N worker processes, one torch thread each: random search ends "
                          "as the serial one (at --threads 1) does; ReLeQ steps N environments together (N must "
                          "divide its 8 episodes per update); HAWQ evaluates its candidates together; greedy and TPE "
                          "stay serial", low=1, metavar="N")
    budget_bits: float | None = option(None, "cost budget: average weight bits over the quantized layers (searched "
                                       "and pinned, as avg_bits) at most B; every strategy returns the best plan "
                                       "within it", metavar="B", default_text="no cost budget")
    budget_bytes: int | None = option(None, "cost budget: packed model size (result.json's size_bytes) at most N "
                                      "bytes", low=1, metavar="N", default_text="no cost budget")
    budget_bops: int | None = option(None, "cost budget: bit-operations per sample (MACs x weight bits x activation "
                                     "bits, float = 32; result.json's compute.bops) at most N", low=1, metavar="N",
                                     default_text="no cost budget")
    hawq_candidates: str = option("kbest", "HAWQ: the plans its evaluations go to: kbest (the integer program's k "
                                  "best plans under the budget) or sweep (its optima under k budgets down to the "
                                  "cheapest plan)", choices=HAWQ_CANDIDATES, metavar="MODE")
    hessian_probes: int = option(32, "HAWQ and ReLeQ's informative state: Rademacher probes of the Hutchinson "
                                 "trace estimates", low=2, metavar="P")
    hessian_batches: int = option(2, "HAWQ and ReLeQ's informative state: training batches the Hessian traces are "
                                  "measured on", low=1, metavar="N")
    sensitivity_loss: bool = option(False, "HAWQ: also measure each layer's validation loss change quantized alone, "
                                    "at every bit choice (recorded in sensitivity.json; layers x choices passes)")
    resume: bool = option(False, "continue the search in --out, reusing its evaluated plans")
    strict: bool = option(False, "exit with code 3 when the final fine-tune fails its health checks; the run "
                          "folder is written either way")

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise unknown_name("search strategy", self.strategy, STRATEGIES)
        super().validate()
        if self.time_limit is not None and not self.time_limit > 0:
            raise ConfigError(f"time_limit must be a number of seconds > 0, got {self.time_limit!r}")
        if self.max_evals is None and self.time_limit is None:
            raise ConfigError("give the search a budget: --max-evals N and/or --time-limit SECONDS")
        given = [flag for flag, value in (("--budget-bits", self.budget_bits), ("--budget-bytes", self.budget_bytes),
                                          ("--budget-bops", self.budget_bops)) if value is not None]
        if len(given) > 1:
            raise ConfigError(f"give one cost budget, not {' and '.join(given)}")
        if self.budget_bits is not None and (isinstance(self.budget_bits, bool) or not math.isfinite(self.budget_bits)
                                             or not self.budget_bits > 0):
            raise ConfigError(f"--budget-bits must be a number of bits > 0, got {self.budget_bits!r}")
        if self.strategy == "hawq" and not given:
            raise ConfigError("hawq allocates bits under a cost budget: give --budget-bits B, --budget-bytes N or "
                              "--budget-bops N")
        if self.quantizer not in quantizer_names():
            raise ConfigError(f"the search needs a quantizer ({', '.join(quantizer_names())}), "
                              f"not {self.quantizer!r}")
        self.spec()
        self.bits()
        if self.acts() is not None and not self.search_acts:
            raise ConfigError("--act-choices needs --search-acts (without it activations stay float)")
        self.reward_config()
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1): the search measures accuracy on that share of the "
                              f"train split, never on test; got {self.val_fraction}")
        if not self.eval_lr > 0:
            raise ConfigError(f"eval_lr must be > 0, got {self.eval_lr}")
        self.finetune_config()

    def spec(self) -> QuantizerSpec:
        return QuantizerSpec(self.quantizer, scale=self.scale)

    def bits(self) -> tuple[int, ...]:
        return parse_bits(self.bit_choices, "--bit-choices")

    def acts(self) -> tuple[int, ...] | None:
        return None if self.act_choices is None else parse_bits(self.act_choices, "--act-choices")

    def space(self, model: nn.Module) -> SearchSpace:
        return SearchSpace.from_model(model, self.bits(), self.pin_first_last, self.search_acts, self.acts())

    def cost_kind(self) -> tuple[str, float] | None:
        """(kind, value) of the cost budget, or None."""
        for kind, value in (("bits", self.budget_bits), ("bytes", self.budget_bytes), ("bops", self.budget_bops)):
            if value is not None:
                return kind, float(value) if kind == "bits" else value
        return None

    def reward_config(self) -> RewardConfig:
        return RewardConfig(th=self.reward_th, a=self.reward_a, b=self.reward_b)

    def finetune_config(self) -> TrainConfig:
        return QUANTIZED_FINETUNE.resolve(lr=self.finetune_lr).train_config(self.finetune_epochs, device=self.device)

    def method_name(self) -> str:
        return self.strategy


def _check_folder(run: RunFolder, resume: bool) -> None:
    if not resume:
        run.check(False)
    elif not run.file(CONFIG_FILE).exists():
        raise CheckpointError(f"--resume: {run.path} holds no search to resume (no {CONFIG_FILE})")


def _check_quantizer(model: nn.Module, space: SearchSpace, spec: QuantizerSpec) -> None:
    """Every bit choice must be one the quantizer builds (e.g. twn: 1 or 2 bits): fail before any work."""
    for w in space.bit_choices:
        quantize_(copy.deepcopy(model), space.to_plan(space.uniform(w)), spec)
    for a in space.act_choices or ():
        quantize_(copy.deepcopy(model), space.to_plan(space.uniform(act=a)), spec)


def check_search(options: SearchOptions, model: nn.Module) -> Any:
    """Every bit choice quantizes ``model`` and the agent's settings hold: ReLeQ's PPO settings (else None)."""
    _check_quantizer(model, options.space(model), options.spec())
    if options.strategy != "releq":
        return None
    from lowbit.search.releq import PPOSettings

    ppo = PPOSettings(policy=options.policy)
    if ppo.episodes_per_update % options.workers:
        raise ConfigError(f"ReLeQ plays {ppo.episodes_per_update} episodes per update, shared by its --workers "
                          f"environments: --workers must divide {ppo.episodes_per_update}, got {options.workers}")
    return ppo


def cost_budget(options: SearchOptions, model: nn.Module, sample_input: torch.Tensor) -> CostBudget | None:
    """The cost budget of the options (None without one), checked against the cheapest plan: the
    costs depend on the layers' shapes and the quantizer, not on the weights' values, so this
    runs before the float model is trained."""
    wanted = options.cost_kind()
    if wanted is None:
        return None
    model = copy.deepcopy(model).cpu()
    space = options.space(model)
    costs = SpaceCosts.from_model(model, space, options.spec(), sample_input.cpu() if wanted[0] == "bops" else None)
    budget = CostBudget(wanted[0], wanted[1], costs)
    budget.check_feasible()
    return budget


def needs_sensitivity(options: SearchOptions) -> bool:
    """HAWQ and ReLeQ's informative state read the layers' sensitivity."""
    return options.strategy == "hawq" or (options.strategy == "releq" and options.releq_state == "informative")


def _sensitivity(started: StartedRun, space: SearchSpace, spec: QuantizerSpec) -> Sensitivity:
    """The layers' sensitivity on the float model (reused from OUT/sensitivity.json when it matches)."""
    options = started.options
    train, val = evaluator_loaders(started.data, options.eval_train_size, options.batch_size, options.seed)
    started.reporter.log(f"measuring the layers' sensitivity ({options.hessian_probes} Hutchinson probes on "
                         f"{options.hessian_batches} training batches)")
    return load_or_compute(started.folder.file(SENSITIVITY_FILE), started.model, space, spec, train,
                           probes=options.hessian_probes, n_batches=options.hessian_batches, seed=options.seed,
                           val=val if options.sensitivity_loss else None, device=options.device,
                           log=started.reporter.log)


def _train_float(started: StartedRun) -> None:
    """Train the float model into OUT/float (reused, or continued, on resume) and load it into the run's model."""
    options, folder = started.options, started.folder.file(FLOAT_DIR)
    if not (folder / MODEL_FILE).exists():
        started.reporter.log(f"training the float model ({options.float_epochs} epochs) -> {folder}")
        run_train(float_run_options(options, str(folder), options.float_epochs, val_fraction=options.val_fraction,
                                    resume=folder.is_dir() and any(folder.iterdir())),
                  reporter=started.reporter, command=started.command)
    load_float_weights(started.model, folder)


def _evaluator(started: StartedRun, space: SearchSpace, spec: QuantizerSpec) -> CachedEvaluator:
    """The cached fine-tune evaluator (serial, a local pool or Ray tasks), saying one line per new plan."""
    options, reporter = started.options, started.reporter
    eval_train, val_loader = evaluator_loaders(started.data, options.eval_train_size, options.batch_size,
                                               options.seed)
    inner = FineTuneEvaluator(started.model, space, eval_train, val_loader, steps=options.eval_steps,
                              quantizer=spec, lr=options.eval_lr, seed=options.seed, device=options.device)
    logged = LoggedEvaluator(inner, reporter, "plan")
    serial = options.strategy in ("greedy", "tpe")  # each of their plans depends on the last accuracy
    workers = 1 if serial else options.workers
    if workers != options.workers:
        reporter.log(f"{options.strategy} evaluates one plan at a time: --workers {options.workers} is not used")
    cache = started.folder.file(CACHE_FILE)
    if workers == 1 and options.executor == "local":
        return CachedEvaluator(logged, space, cache)
    return ParallelEvaluator(logged, space, cache, workers=workers, worker_evaluator=inner, on_result=logged.log,
                             executor=options.executor, ray_address=options.ray_address)


def _search(started: StartedRun, space: SearchSpace, spec: QuantizerSpec, ppo: Any,
            limit: CostBudget | None = None) -> tuple[SearchOutcome, CachedEvaluator]:
    """The strategy under the evaluator; metrics.jsonl gets one ``phase: "search"`` line per plan visited."""
    options = started.options
    sensitivity = _sensitivity(started, space, spec) if needs_sensitivity(options) else None
    evaluator = _evaluator(started, space, spec)
    cached = {r.key for r in evaluator.records}
    try:
        outcome = run_strategy(options.strategy, space, evaluator, max_evals=options.max_evals,
                               time_limit=options.time_limit, seed=options.seed,
                               reward_config=options.reward_config(), weighted_state=options.weighted_state,
                               ppo=ppo, agent_dir=started.folder.file(AGENT_DIR), resume=options.resume,
                               workers=options.workers, reporter=started.reporter, cost_budget=limit,
                               sensitivity=sensitivity, hawq_candidates=options.hawq_candidates,
                               releq_state=options.releq_state)
    finally:
        if isinstance(evaluator, ParallelEvaluator):
            evaluator.close()
    if outcome.best is None:
        raise LowbitError("the search finished without evaluating a plan; raise --max-evals or --time-limit")
    lines = [json.dumps({"phase": "search", "index": i, **r.to_dict(), "cached": r.key in cached})
             for i, r in enumerate(outcome.records)]
    atomic_write_text(started.folder.metrics, "".join(line + "\n" for line in lines))
    return outcome, evaluator


def _finetune(started: StartedRun, plan: Plan, spec: QuantizerSpec) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The best plan fine-tuned from the float weights on train (minus validation), scored on validation."""
    options = started.options
    model = started.args.build()
    model.load_state_dict(started.model.state_dict())
    quantize_(model, plan, spec)
    metrics = MetricsWriter(started.folder.metrics)
    try:
        torch.manual_seed(options.seed)
        history = finetune_quantized(model, started.train_loader(), options.finetune_config(),
                                     eval_loader=started.eval_loader("val"), eval_name="val", metrics=metrics,
                                     reporter=started.reporter)
    finally:
        metrics.close()
    return model, history


def run_search(options: SearchOptions, reporter: Reporter | None = None, command: str | None = None) -> dict[str, Any]:
    """Search a per-layer plan as ``options`` say, write the run folder, return ``result.json``'s content."""
    options.validate()
    started = start_run(options, reporter, command, init=options.init, val_fraction=options.val_fraction,
                        check=lambda folder: _check_folder(folder, options.resume))
    spec, net, folder = options.spec(), started.model, started.folder
    ppo = check_search(options, net)
    limit = cost_budget(options, net, started.args.sample_input())
    started.write_config(options.strategy, resume=options.resume)
    if options.init is None:
        _train_float(started)
    net.to(options.device)
    # the agent's features (weight std per layer) come from the float weights, final only now
    space = options.space(net)
    fp_accuracy = evaluate(net, started.eval_loader("test"), options.device)[1]
    outcome, evaluator = _search(started, space, spec, ppo, limit)
    best = outcome.best
    plan = Plan.from_layer_bits(space.resolved(best.choices))
    plan.save(folder.file(PLAN_FILE))
    started.reporter.log(f"best plan {best.key} (reward {best.reward:.3f}, val accuracy {100 * best.accuracy:.2f}%);"
                         f" fine-tuning {options.finetune_epochs} epochs")
    model, history = _finetune(started, plan, spec)
    accuracy = evaluate(model, started.eval_loader("test"), options.device)[1]
    val_accuracy = evaluate(model, started.eval_loader("val"), options.device)[1]
    save_model(folder.model_file, model, started.args, spec, plan)

    health = check_health(model, history, started.data.num_classes, accuracy=val_accuracy, accuracy_name="val")
    write_search_plots(folder.file("plots"), outcome, space, layer_bits(model), f"{options.model} {options.strategy}")
    result = started.result(
        model, options.strategy, spec, accuracy, workers=options.workers, executor=options.executor,
        val_accuracy=val_accuracy, fp_accuracy=fp_accuracy, accuracy_loss=fp_accuracy - accuracy,
        compute=model_compute_costs(model, started.args.sample_input().to(options.device)).to_dict(),
        init=options.init if options.init is not None else str(folder.file(FLOAT_DIR)),
        finetune_epochs=options.finetune_epochs, finetune_lr=options.finetune_lr,
        search=search_summary(outcome, space, evaluator))
    return started.finish(result, health, "the search's final fine-tune", f"test accuracy [bold]{100 * accuracy:.2f}%"
                          f"[/] (float {100 * fp_accuracy:.2f}%)  avg bits {result['avg_bits']:.2f}  "
                          f"size {result['size_bytes']:,} B")
