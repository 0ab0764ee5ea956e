"""``lowbit search`` / ``lowbit releq``: per-layer bitwidth search, ReLeQ (Elthakeb et al.), METHODS.md
section 5, and its comparators (random search, greedy descent), writing one run folder.

The Python entry point is :func:`run_search` with :class:`SearchOptions`. Steps:

1. Validate every option, load the data (``val_fraction`` of the train split held out as the
   validation split) and build the float model: ``init`` (a float run folder or model file), or
   a float model trained first into ``OUT/float`` (a run folder of its own, on the same train
   split minus validation). Nothing is written before all user errors are raised.
2. Search: the evaluator fine-tunes each plan ``eval_steps`` steps on ``eval_train_size`` train
   samples and measures validation accuracy (never test); it is cached in
   ``OUT/evaluations.jsonl``, so ``--resume`` reuses every evaluated plan (see
   ``lowbit.runs.search_setup`` for the resumed budget). ReLeQ keeps its agent in ``OUT/agent``.
   With ``workers > 1`` random search and ReLeQ evaluate plans in that many worker processes
   (one torch thread each; ``lowbit.search.parallel``): random search ends with the same plans
   as the serial one (run at ``--threads 1``), ReLeQ runs that many environments in lockstep;
   greedy descent stays serial.
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.costs import model_compute_costs, model_costs
from lowbit.data import ArrayLoader, list_datasets
from lowbit.errors import CheckpointError, ConfigError, LowbitError, unknown_name
from lowbit.health import check_health
from lowbit.io import atomic_write_text
from lowbit.models import model_info
from lowbit.nn import finetune_quantized, layer_bits, quantize_
from lowbit.plan import Plan
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec
from lowbit.recipes import QUANTIZED_FINETUNE, SEARCH_EVALUATION
from lowbit.report.search_plots import plot_pareto, plot_plan_bits, plot_rewards
from lowbit.runs.dcq_run import sample_input
from lowbit.runs.finish import finish_run
from lowbit.runs.folder import CONFIG_FILE, PLAN_FILE, RunFolder
from lowbit.runs.model_io import MODEL_FILE, load_float_weights, resolve_model_file, save_model
from lowbit.runs.result_fields import model_fields, record_fields
from lowbit.runs.start import start_model
from lowbit.runs.search_setup import LoggedEvaluator, evaluator_loaders, parse_bits
from lowbit.search.budget import remaining_budget
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.search import Budget, CachedEvaluator, FineTuneEvaluator, RewardConfig, SearchOutcome, SearchSpace
from lowbit.search import greedy_search, random_search
from lowbit.search.parallel import ParallelEvaluator
from lowbit.search.space import Choices
from lowbit.train import MetricsWriter, Reporter, TrainConfig, evaluate

STRATEGIES = ("releq", "random", "greedy")
POLICIES = ("mlp", "lstm")
FLOAT_DIR, AGENT_DIR, CACHE_FILE = "float", "agent", "evaluations.jsonl"


@dataclass
class SearchOptions:
    strategy: str = "releq"
    model: str = "lenet5"
    dataset: str = "digits"
    data_dir: str | None = None
    init: str | None = None  # float run folder or model file; None: train one into OUT/float
    float_epochs: int = 10  # float training when init is None
    quantizer: str = "dorefa"
    scale: str = "auto"
    bit_choices: str = "2,3,4,5,8"
    search_acts: bool = False
    act_choices: str | None = None  # default: bit_choices (with search_acts)
    pin_first_last: bool = True
    weighted_state: bool = False  # quant_state weighted by parameter count
    max_evals: int | None = 60  # new plan evaluations (cached plans are free)
    time_limit: float | None = None  # seconds
    policy: str = "mlp"  # ReLeQ's PPO policy
    reward_th: float = 0.4
    reward_a: float = 0.8
    reward_b: float = 1.0
    eval_steps: int = 200  # fine-tune steps per evaluated plan
    eval_train_size: int = 2000  # training samples the evaluator fine-tunes on
    eval_lr: float = SEARCH_EVALUATION.lr
    val_fraction: float = 0.2  # of the train split, held out for the evaluator's accuracy
    finetune_epochs: int = 10  # full fine-tune of the best plan
    finetune_lr: float = QUANTIZED_FINETUNE.lr  # lowbit.recipes
    batch_size: int = 64
    seed: int = 0
    threads: int | None = None
    workers: int = 1  # processes evaluating plans (random search, ReLeQ), lowbit.search.parallel
    device: str = "cpu"
    out: str | None = None
    resume: bool = False
    strict: bool = False  # exit non-zero when the final fine-tune fails its health checks (lowbit.health)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise unknown_name("search strategy", self.strategy, STRATEGIES)
        model_info(self.model)
        if self.dataset not in list_datasets():
            raise unknown_name("dataset", self.dataset, list_datasets())
        for name, low in (("float_epochs", 1), ("eval_steps", 0), ("eval_train_size", 1), ("finetune_epochs", 0),
                          ("batch_size", 1), ("seed", 0), ("threads", 1), ("max_evals", 1), ("workers", 1)):
            value = getattr(self, name)
            if value is None and name in ("threads", "max_evals"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ConfigError(f"time_limit must be a number of seconds > 0, got {self.time_limit!r}")
        if self.max_evals is None and self.time_limit is None:
            raise ConfigError("give the search a budget: --max-evals N and/or --time-limit SECONDS")
        if self.policy not in POLICIES:
            raise unknown_name("policy", self.policy, POLICIES)
        if self.quantizer == NO_QUANTIZER:
            raise ConfigError("the search needs a quantizer (dorefa, wrpn, pact, lsq, twn), not 'none'")
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

    def reward_config(self) -> RewardConfig:
        return RewardConfig(th=self.reward_th, a=self.reward_a, b=self.reward_b)

    def finetune_config(self) -> TrainConfig:
        return QUANTIZED_FINETUNE.resolve(lr=self.finetune_lr).train_config(self.finetune_epochs, device=self.device)

    def default_out(self) -> str:
        return f"runs/{self.model}-{self.dataset}-{self.strategy}-s{self.seed}"


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


def _ppo_settings(options: SearchOptions) -> Any:
    if options.strategy != "releq":
        return None
    from lowbit.search.releq import PPOSettings

    ppo = PPOSettings(policy=options.policy)
    if ppo.episodes_per_update % options.workers:
        raise ConfigError(f"ReLeQ plays {ppo.episodes_per_update} episodes per update, shared by its --workers "
                          f"environments: --workers must divide {ppo.episodes_per_update}, got {options.workers}")
    return ppo


def _parallel_workers(options: SearchOptions) -> int:
    """Worker processes for the evaluations: greedy descent evaluates one plan at a time."""
    return 1 if options.strategy == "greedy" else options.workers


def _log_batch_result(logged: LoggedEvaluator) -> Any:
    """``on_result`` of a ParallelEvaluator: the line LoggedEvaluator says for a plan evaluated in the parent."""
    def log(choices: Choices, accuracy: float) -> None:
        logged.count += 1
        logged.reporter.log(f"{logged.label} {logged.count}: {', '.join(f'{w}/{a}' for w, a in choices)} "
                            f"-> val accuracy {100 * accuracy:.2f}%")
    return log


def _train_float(options: SearchOptions, run: RunFolder, net: nn.Module, reporter: Reporter,
                 command: str | None) -> None:
    """Train the float model into OUT/float (reused, or continued, on resume) and load it into ``net``."""
    folder = run.file(FLOAT_DIR)
    if not (folder / MODEL_FILE).exists():
        reporter.log(f"training the float model ({options.float_epochs} epochs) -> {folder}")
        run_train(TrainOptions(model=options.model, dataset=options.dataset, data_dir=options.data_dir,
                               epochs=options.float_epochs, batch_size=options.batch_size, seed=options.seed,
                               val_fraction=options.val_fraction, out=str(folder), device=options.device,
                               threads=options.threads, resume=folder.is_dir() and any(folder.iterdir())),
                  reporter=reporter, command=command)
    load_float_weights(net, folder)


def _search(options: SearchOptions, space: SearchSpace, evaluator: CachedEvaluator, ppo: Any,
            agent_dir: Path, reporter: Reporter) -> SearchOutcome:
    """Run the strategy. Random and greedy get the budget the cache file has not spent
    (``lowbit.search.budget.remaining_budget``); the agent keeps its own count in ``agent_dir`` on resume."""
    common: dict[str, Any] = {"reward_config": options.reward_config(), "weighted_state": options.weighted_state}
    budget = (Budget(options.max_evals, options.time_limit) if options.strategy == "releq"
              else remaining_budget(options.max_evals, options.time_limit, evaluator))
    reporter.log(f"{options.strategy} search over {space.n_searched} layers ({space.n_plans:,} plans), budget "
                 f"{budget.to_dict()}, {len(evaluator.records)} plan(s) already in the cache")
    if options.strategy == "random":
        return random_search(space, evaluator, budget, options.seed, **common)
    if options.strategy == "greedy":
        return greedy_search(space, evaluator, budget, **common)
    from lowbit.search.releq import releq_search

    seen: set[str] = set()
    best = [float("-inf")]
    with reporter.bar("ReLeQ plans", options.max_evals or 0) as bar:
        def on_episode(episode: dict[str, Any]) -> None:
            best[0] = max(best[0], episode["reward"])
            if episode["plan_key"] not in seen:
                seen.add(episode["plan_key"])
                bar.advance(f"best reward {best[0]:.3f}")

        return releq_search(space, evaluator, budget, options.seed, ppo=ppo, state_dir=agent_dir,
                            resume=options.resume, n_envs=options.workers, on_episode=on_episode, **common)


def _write_search_metrics(path: Path, outcome: SearchOutcome, cached: set[str]) -> None:
    lines = [json.dumps({"phase": "search", "index": i, **r.to_dict(), "cached": r.key in cached})
             for i, r in enumerate(outcome.records)]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _write_plots(run: RunFolder, outcome: SearchOutcome, space: SearchSpace, bits: dict[str, Any],
                 title: str) -> None:
    plots = run.file("plots")
    episodes = outcome.settings.get("episode_rewards")
    if outcome.strategy == "releq" and episodes is not None:
        plot_rewards(episodes, plots / "rewards.png", f"{title}: reward per episode")
    else:
        plot_rewards([r.reward for r in outcome.records], plots / "rewards.png",
                     f"{title}: reward per evaluated plan", xlabel="evaluated plan")
    pinned = [n for n in space.layer_names if n not in space.searched_names]
    plot_plan_bits({n: b.weight for n, b in bits.items()}, plots / "bits.png", f"{title}: best plan",
                   act_bits={n: b.act for n, b in bits.items()} if space.search_acts else None, pinned=pinned)
    best = outcome.best
    plot_pareto([(r.avg_bits, r.accuracy) for r in outcome.records], [(r.avg_bits, r.accuracy) for r in outcome.pareto],
                plots / "pareto.png", f"{title}: evaluated plans",
                best=None if best is None else (best.avg_bits, best.accuracy))


def _search_summary(outcome: SearchOutcome, space: SearchSpace, evaluator: CachedEvaluator) -> dict[str, Any]:
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
    }


def run_search(options: SearchOptions, reporter: Reporter | None = None, command: str | None = None) -> dict[str, Any]:
    """Search a per-layer plan as ``options`` say, write the run folder, return ``result.json``'s content."""
    reporter = reporter or Reporter()
    options.validate()
    if options.init is not None:
        resolve_model_file(options.init)
    run = RunFolder(options.out or options.default_out())
    _check_folder(run, options.resume)
    start = time.perf_counter()
    args, data, net, _ = start_model(options.model, options.dataset, options.data_dir, seed=options.seed,
                                     threads=options.threads, init=options.init, reporter=reporter,
                                     val_fraction=options.val_fraction)
    space = SearchSpace.from_model(net, options.bits(), options.pin_first_last, options.search_acts, options.acts())
    spec = options.spec()
    _check_quantizer(net, space, spec)
    ppo = _ppo_settings(options)

    if not options.resume:
        run.prepare(False)
    run.write_config({**asdict(options), "out": str(run.path), "method": options.strategy})
    if options.init is None:
        _train_float(options, run, net, reporter, command)
    net.to(options.device)
    # the space above validated the choices; the agent's features (weight std per layer) must come
    # from the float weights, which are only final now (loaded or just trained)
    space = SearchSpace.from_model(net, options.bits(), options.pin_first_last, options.search_acts, options.acts())
    eval_train, val_loader = evaluator_loaders(data, options.eval_train_size, options.batch_size, options.seed)
    train_loader = ArrayLoader(data.train, batch_size=options.batch_size, shuffle=True, seed=options.seed,
                               mean=data.mean, std=data.std)
    test_loader = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    fp_accuracy = evaluate(net, test_loader, options.device)[1]
    inner = FineTuneEvaluator(net, space, eval_train, val_loader, steps=options.eval_steps, quantizer=spec,
                              lr=options.eval_lr, seed=options.seed, device=options.device)
    logged = LoggedEvaluator(inner, reporter, "plan")
    workers = _parallel_workers(options)
    if workers != options.workers:
        reporter.log(f"greedy descent evaluates one plan at a time: --workers {options.workers} is not used")
    evaluator = (CachedEvaluator(logged, space, run.file(CACHE_FILE)) if workers == 1 else
                 ParallelEvaluator(logged, space, run.file(CACHE_FILE), workers=workers, worker_evaluator=inner,
                                   on_result=_log_batch_result(logged)))
    cached = {r.key for r in evaluator.records}
    try:
        outcome = _search(options, space, evaluator, ppo, run.file(AGENT_DIR), reporter)
    finally:
        if isinstance(evaluator, ParallelEvaluator):
            evaluator.close()
    best = outcome.best
    if best is None:
        raise LowbitError("the search finished without evaluating a plan; raise --max-evals or --time-limit")
    _write_search_metrics(run.metrics, outcome, cached)

    plan = Plan.from_layer_bits(space.resolved(best.choices))
    plan.save(run.file(PLAN_FILE))
    reporter.log(f"best plan {best.key} (reward {best.reward:.3f}, val accuracy {100 * best.accuracy:.2f}%); "
                 f"fine-tuning {options.finetune_epochs} epochs")
    model = args.build()
    model.load_state_dict(net.state_dict())
    quantize_(model, plan, spec)
    metrics = MetricsWriter(run.metrics)
    try:
        torch.manual_seed(options.seed)
        history = finetune_quantized(model, train_loader, options.finetune_config(), eval_loader=val_loader,
                                     eval_name="val", metrics=metrics, reporter=reporter)
    finally:
        metrics.close()
    accuracy = evaluate(model, test_loader, options.device)[1]
    val_accuracy = evaluate(model, val_loader, options.device)[1]
    save_model(run.model_file, model, args, spec, plan)

    costs, bits = model_costs(model), layer_bits(model)
    health = check_health(model, history, data.num_classes, accuracy=val_accuracy, accuracy_name="val")
    _write_plots(run, outcome, space, bits, f"{options.model} {options.strategy}")
    result = {
        **record_fields(command, start),
        "model": options.model, "model_args": args.to_dict(), "dataset": data.name, "data": data.description,
        "method": options.strategy, "quantizer": spec.to_dict(), "seed": options.seed, "workers": options.workers,
        "accuracy": accuracy, "val_accuracy": val_accuracy, "fp_accuracy": fp_accuracy,
        "accuracy_loss": fp_accuracy - accuracy,
        **model_fields(model),
        "compute": model_compute_costs(model, sample_input(args).to(options.device)).to_dict(),
        "init": options.init if options.init is not None else str(run.file(FLOAT_DIR)),
        "finetune_epochs": options.finetune_epochs, "finetune_lr": options.finetune_lr,
        "search": _search_summary(outcome, space, evaluator),
    }
    return finish_run(run, result, health, reporter=reporter, what="the search's final fine-tune",
                      strict=options.strict, summary=f"test accuracy [bold]{100 * accuracy:.2f}%[/] (float "
                      f"{100 * fp_accuracy:.2f}%)  avg bits {costs.avg_bits:.2f}  size {costs.size_bytes:,} B")
