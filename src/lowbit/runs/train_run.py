"""``lowbit train``: train a float or quantized zoo model on a dataset and write a run folder.

The Python-level entry point is :func:`run_train` with :class:`TrainOptions`; the CLI only turns
flags and YAML into options. Under ``torchrun --nproc-per-node N -m lowbit train ...`` it trains
with DDP (:mod:`lowbit.train.distributed`): ``--batch-size`` is the global batch (each rank
takes batch_size / N; it must be divisible by N), every rank trains and evaluates, and rank 0
alone writes the run folder. Methods built on plain training (SinReQ, ...) extend it through
``MethodHooks`` (loss terms, epoch callbacks, extra result fields).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from lowbit.costs import model_costs
from lowbit.data import ArrayLoader, list_datasets
from lowbit.models import model_info
from lowbit.errors import CheckpointError, ConfigError, unknown_name
from lowbit.health import HealthWatch, check_health
from lowbit.nn import aux_loss_terms, has_batch_norm, is_quantizer_param, layer_bits, quantize_
from lowbit.plan import Plan
from lowbit.quant.bits import FLOAT_BITS, check_bits
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec, list_quantizers
from lowbit.recipes import Recipe, qat_recipe
from lowbit.reg.schedules import make_schedule
from lowbit.reg.sinreq import DOMAINS as SINREQ_DOMAINS
from lowbit.runs.finish import finish_run
from lowbit.runs.folder import RunFolder
from lowbit.runs.hooks import MethodHooks
from lowbit.runs.model_io import resolve_model_file, save_model
from lowbit.runs.plots import write_weight_plot
from lowbit.runs.result_fields import model_fields, record_fields
from lowbit.runs.start import check_global_batch, start_model, train_loader
from lowbit.runs.sinreq_hooks import SINREQ_MODES, quantized_run_hooks
from lowbit.train import QUIET, MetricsWriter, Reporter, TrainConfig, evaluate, fit
from lowbit.train.distributed import DistInfo, barrier, cleanup, init_distributed


@dataclass
class TrainOptions:
    model: str = "lenet5"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None  # None: the recipe's (lowbit.recipes, by quantizer and --init)
    optimizer: str | None = None  # None: the recipe's
    warmup_epochs: float | None = None  # None: the recipe's
    schedule: str = "cosine"
    weight_decay: float = 5e-4
    seed: int = 0
    quantizer: str = NO_QUANTIZER
    wbits: int | None = None
    abits: int | None = None
    scale: str = "auto"
    plan: str | None = None
    width_mult: float = 1.0
    init: str | None = None
    out: str | None = None
    resume: bool = False
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    tensorboard: bool = False
    sinreq: float | None = None  # SinReQ weight λ (lowbit train --sinreq)
    sinreq_schedule: str = "constant"
    sinreq_domain: str = "aligned"
    sinreq_mode: str = "qat"  # qat: on top of quantized training; pre: float phase, then quantize
    sinreq_train_quantizer: bool = False  # let SinReQ's gradient move learned scales/steps (it can cheat)
    val_fraction: float = 0.0  # hold out this share of train as a validation split (never test)
    strict: bool = False  # a run that fails its health checks exits non-zero (lowbit.health)

    def validate(self) -> None:
        model_info(self.model)  # unknown names fail here, before any folder is created
        if self.dataset not in list_datasets():
            raise unknown_name("dataset", self.dataset, list_datasets())
        for name in ("epochs", "batch_size", "seed", "threads"):
            value = getattr(self, name)
            if name == "threads" and value is None:
                continue
            low = 1 if name in ("batch_size", "threads") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.quantizer not in list_quantizers():
            QuantizerSpec(self.quantizer)  # raises with the allowed names
        if self.plan is not None and (self.wbits is not None or self.abits is not None):
            raise ConfigError("give either --plan or --wbits/--abits, not both")
        for flag, bits in (("--wbits", self.wbits), ("--abits", self.abits)):
            if bits is not None:
                check_bits(bits, None, what=f"{flag} value")
        if self.quantizer == NO_QUANTIZER and (self.plan or (self.wbits or 32) != 32 or (self.abits or 32) != 32):
            raise ConfigError("low bits were asked for but --quantizer is 'none'; choose a quantizer "
                              f"({', '.join(q for q in list_quantizers() if q != NO_QUANTIZER)})")
        if self.sinreq is not None and self.quantizer == NO_QUANTIZER:
            raise ConfigError("--sinreq needs a quantizer (it pulls weights onto that quantizer's levels)")
        if self.sinreq is not None:
            make_schedule(self.sinreq_schedule, self.sinreq)
        if self.sinreq_domain not in SINREQ_DOMAINS:
            raise ConfigError(f"unknown SinReQ domain {self.sinreq_domain!r}; choose one of {', '.join(SINREQ_DOMAINS)}")
        if self.sinreq_mode not in SINREQ_MODES:
            raise ConfigError(f"unknown SinReQ mode {self.sinreq_mode!r}; choose one of {', '.join(SINREQ_MODES)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.width_mult > 0:
            raise ConfigError(f"width_mult must be > 0, got {self.width_mult}")
        if self.out is not None and not str(self.out).strip():
            raise ConfigError("out must name a folder, got an empty string")
        self.train_config(batch_norm=False)  # optimizer, lr, warm-up and schedule values

    def build_plan(self) -> Plan | None:
        if self.quantizer == NO_QUANTIZER:
            return None
        if self.plan is not None:
            return Plan.load(self.plan)
        return Plan.uniform(self.wbits if self.wbits is not None else 4,
                            self.abits if self.abits is not None else FLOAT_BITS)

    def recipe(self, batch_norm: bool) -> Recipe:
        """This quantizer's default recipe (from scratch or from ``--init``, for a network with or
        without batch norm) with the values given explicitly in its place."""
        default = qat_recipe(self.quantizer, from_float=self.init is not None, batch_norm=batch_norm)
        return default.resolve(self.optimizer, self.lr, self.warmup_epochs)

    def train_config(self, batch_norm: bool) -> TrainConfig:
        return self.recipe(batch_norm).train_config(self.epochs, schedule=self.schedule,
                                                    weight_decay=self.weight_decay, device=self.device)

    def default_out(self) -> str:
        return f"runs/{self.model}-{self.dataset}-{self.method_name()}-s{self.seed}"

    def method_name(self) -> str:
        return "float" if self.quantizer == NO_QUANTIZER else self.quantizer


def run_train(options: TrainOptions, hooks: MethodHooks | None = None, reporter: Reporter | None = None,
              command: str | None = None) -> dict[str, Any]:
    """Train as ``options`` say, write the run folder, return ``result.json``'s content.

    Launched by torchrun with more than one process: joins the process group (and leaves it at
    the end when it created it), trains with DDP; only rank 0 writes files.
    """
    options.validate()
    info = init_distributed(options.device)
    try:
        return _run_train(options, hooks, reporter, command, info)
    finally:
        cleanup(info)


def _run_train(options: TrainOptions, hooks: MethodHooks | None, reporter: Reporter | None, command: str | None,
               info: DistInfo) -> dict[str, Any]:
    reporter = (reporter or Reporter()) if info.is_main else QUIET
    check_global_batch(options.batch_size, info.world_size)
    hooks = hooks or MethodHooks()
    if options.quantizer != NO_QUANTIZER:
        hooks = quantized_run_hooks(options.sinreq, options.sinreq_schedule, options.sinreq_domain,
                                    options.sinreq_mode, options.sinreq_train_quantizer).combine(hooks)
    spec = QuantizerSpec(options.quantizer, scale=options.scale)
    plan = options.build_plan()
    if options.init is not None:
        resolve_model_file(options.init)  # fail before any work if it is missing
    run = RunFolder(options.out or options.default_out())
    run.check(options.resume)  # created below, once the model is built: a user error leaves no folder
    # killed before its first checkpoint: --resume starts the run over in its folder (same result)
    restart = options.resume and run.started_without_checkpoint()
    if restart:
        _check_train_config(run, hooks)
    start = time.perf_counter()
    args, data, model, fp_accuracy = start_model(options.model, options.dataset, options.data_dir, seed=options.seed,
                                                 threads=options.threads, init=options.init, reporter=reporter,
                                                 val_fraction=options.val_fraction, width_mult=options.width_mult)
    resolved = quantize_(model, plan, spec) if plan is not None else layer_bits(model)
    config = options.train_config(batch_norm=has_batch_norm(model))
    if info.world_size > 1:
        config = replace(config, device=info.device)  # cuda -> cuda:LOCAL_RANK

    method = options.method_name() + hooks.suffix
    barrier()  # every rank has checked the folder before rank 0 creates it
    if info.is_main:
        run.prepare(options.resume)
        if options.resume:
            run.remove_scratch()  # temp files of writes a kill interrupted
            if restart:
                reporter.log(f"{run.path} has no checkpoint yet (stopped during its first epoch): starting over")
        run.write_config({**asdict(options), "out": str(run.path), "method": method, "resolved_lr": config.lr,
                          "resolved_optimizer": config.optimizer, "resolved_warmup_epochs": config.warmup_epochs,
                          **hooks.config})
        if plan is not None:
            Plan.from_layer_bits(resolved).save(run.file("plan.json"))

    loader = train_loader(data, options.batch_size, options.seed, info)
    test_loader = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    val_loader = (ArrayLoader(data.val, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
                  if data.val is not None else None)
    terms = [*hooks.loss_terms(model), *aux_loss_terms(model)]
    metrics = MetricsWriter(run.metrics if info.is_main else None,
                            run.file("tensorboard") if options.tensorboard and info.is_main else None)
    if restart:
        metrics.truncate_after(-1)  # lines of epochs whose checkpoint was never written
    watch = HealthWatch(data.num_classes, options.epochs, reporter) if info.is_main else None
    try:
        hooks.before_fit(model)
        history = fit(model, loader, config, eval_loader=val_loader if val_loader is not None else test_loader,
                      eval_name="test" if val_loader is None else "val", loss_terms=terms,
                      callbacks=hooks.callbacks, no_decay=is_quantizer_param, checkpoint_path=run.checkpoint,
                      resume=options.resume and not restart, metrics=metrics, reporter=reporter,
                      watch=watch).history
    finally:
        metrics.close()
    hooks.after_fit(model)
    _, accuracy = evaluate(model, test_loader, config.device)
    val_accuracy = evaluate(model, val_loader, config.device)[1] if val_loader is not None else None
    if info.is_main:
        save_model(run.model_file, model, args, spec if plan is not None else None,
                   Plan.from_layer_bits(resolved) if plan is not None else None)

    costs = model_costs(model)
    health = check_health(model if plan is not None else None, history, data.num_classes,
                          accuracy=val_accuracy if val_accuracy is not None else accuracy,
                          accuracy_name="val" if val_accuracy is not None else "test")
    result = {
        **record_fields(command, start),
        "model": options.model, "model_args": args.to_dict(), "dataset": data.name,
        "data": data.description, "method": method, "quantizer": spec.to_dict() if plan else None,
        "seed": options.seed, "epochs": options.epochs,
        "accuracy": accuracy, "val_accuracy": val_accuracy, "fp_accuracy": accuracy if plan is None else fp_accuracy,
        **model_fields(model),
        **hooks.result_fields(model),
    }
    if info.world_size > 1:
        result["world_size"] = info.world_size
    if not info.is_main:
        return result
    if plan is not None:
        write_weight_plot(model, run.path, f"{options.model} {method}: weights u(w) and quantizer levels")
    return finish_run(run, result, health, reporter=reporter, what="the run", strict=options.strict,
                      summary=f"test accuracy [bold]{100 * accuracy:.2f}%[/]  avg bits {costs.avg_bits:.2f}  "
                      f"size {costs.size_bytes:,} B ({costs.compression:.1f}x smaller than float)")


def _check_train_config(run: RunFolder, hooks: MethodHooks) -> None:
    """Starting a run over is only for a ``lowbit train`` run: refuse another command's folder."""
    saved = run.read_config()
    known = {*TrainOptions.__dataclass_fields__, "out", "method", "resolved_lr", "resolved_optimizer",
             "resolved_warmup_epochs", *hooks.config}
    foreign = sorted(str(k) for k in saved if k not in known)
    if foreign:
        raise CheckpointError(f"--resume: {run.path} holds no checkpoint and its config.yaml is not a "
                              f"'lowbit train' run's (keys {', '.join(foreign[:3])}); nothing to resume")
