"""``lowbit train``: train a float or quantized zoo model on a dataset and write a run folder.

The Python-level entry point is :func:`run_train` with :class:`TrainOptions`; the CLI only turns
flags and YAML into options. Under ``torchrun --nproc-per-node N -m lowbit train ...`` it trains
with DDP (:mod:`lowbit.train.distributed`): ``--batch-size`` is the global batch (each rank
takes batch_size / N; it must be divisible by N), every rank trains and evaluates, and rank 0
alone writes the run folder. Methods built on plain training (SinReQ, ...) extend it through
``MethodHooks`` (loss terms, epoch callbacks, extra result fields).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from lowbit.errors import CheckpointError, ConfigError
from lowbit.health import HealthWatch, check_health
from lowbit.nn import aux_loss_terms, has_batch_norm, is_quantizer_param, quantize_
from lowbit.plan import Plan
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec, list_quantizers
from lowbit.recipes import Recipe, qat_recipe
from lowbit.reg.schedules import SCHEDULES as SINREQ_SCHEDULES
from lowbit.reg.schedules import make_schedule
from lowbit.reg.sinreq import DOMAINS as SINREQ_DOMAINS
from lowbit.runs.folder import RunFolder
from lowbit.train.hooks import MethodHooks
from lowbit.runs.lifecycle import StartedRun, processes, start_run
from lowbit.runs.model_io import save_model
from lowbit.runs.options import RunOptions, check_plan_flags, option, plan_from, quantizer_names
from lowbit.report.weights_plot import write_weight_plot
from lowbit.reg.sinreq_training import SINREQ_MODES, quantized_run_hooks
from lowbit.train import MetricsWriter, Reporter, TrainConfig, evaluate, fit
from lowbit.train.config import OPTIMIZERS, SCHEDULES


RECIPE = "the quantizer's recipe, README 'Default recipes'"


@dataclass
class TrainOptions(RunOptions):
    epochs: int = option(10, "training epochs", low=0)
    lr: float | None = option(None, "learning rate", default_text=RECIPE)
    optimizer: str | None = option(None, "optimizer", choices=OPTIMIZERS, default_text=RECIPE)
    warmup_epochs: float | None = option(None, "linear LR warm-up over this many epochs", default_text=RECIPE)
    schedule: str = option("cosine", "LR schedule", choices=SCHEDULES)
    weight_decay: float = option(5e-4, "weight decay")
    quantizer: str = option(NO_QUANTIZER, "quantizer (none = float training)", choices=list_quantizers)
    wbits: int | None = option(None, "weight bits 1..8 or 32 (first/last layers stay 8)",
                               default_text="4 with a quantizer")
    abits: int | None = option(None, "activation bits 1..8 or 32", default_text=32)
    plan: str | None = option(None, "plan JSON file (per-layer bits); instead of --wbits/--abits")
    width_mult: float = option(1.0, "widen the model (WRPN)")
    init: str | None = option(None, "float weights to start from: a checkpoint or a run folder")
    resume: bool = option(False, "continue an interrupted run in --out")
    tensorboard: bool = option(False, "also write TensorBoard scalars")
    sinreq: float | None = option(None, "add the SinReQ regularizer with this weight", metavar="LAMBDA")
    sinreq_schedule: str = option("constant", "SinReQ lambda schedule", choices=tuple(SINREQ_SCHEDULES))
    sinreq_domain: str = option("aligned", "SinReQ on the quantizer's u(w) (aligned) or on the raw weight",
                                choices=SINREQ_DOMAINS)
    sinreq_mode: str = option("qat", "SinReQ on top of quantized training (qat) or a float phase, then "
                              "quantize (pre)", choices=SINREQ_MODES)
    sinreq_train_quantizer: bool = option(False, "let SinReQ's gradient also move learned scales/steps (it can "
                                          "then shrink itself by stretching the grid until every weight rounds to 0)")
    val_fraction: float = option(0.0, "hold out this share of the training split for validation (never test)")

    def validate(self) -> None:
        super().validate()
        if self.quantizer not in list_quantizers():
            QuantizerSpec(self.quantizer)  # raises with the allowed names
        check_plan_flags(self.plan, self.wbits, self.abits)
        if self.quantizer == NO_QUANTIZER and (self.plan or (self.wbits or 32) != 32 or (self.abits or 32) != 32):
            raise ConfigError("low bits were asked for but --quantizer is 'none'; choose a quantizer "
                              f"({', '.join(quantizer_names())})")
        if self.sinreq is not None and self.quantizer == NO_QUANTIZER:
            raise ConfigError("--sinreq needs a quantizer (it pulls weights onto that quantizer's levels)")
        if self.sinreq is not None:
            make_schedule(self.sinreq_schedule, self.sinreq)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.width_mult > 0:
            raise ConfigError(f"width_mult must be > 0, got {self.width_mult}")
        self.train_config(batch_norm=False)  # optimizer, lr, warm-up and schedule values

    def build_plan(self) -> Plan | None:
        return None if self.quantizer == NO_QUANTIZER else plan_from(self.plan, self.wbits, self.abits)

    def quantize(self, model: nn.Module) -> tuple[QuantizerSpec, Plan | None]:
        """Quantize ``model`` in place as the options say: (spec, the resolved plan; None for float)."""
        spec, plan = QuantizerSpec(self.quantizer, scale=self.scale), self.build_plan()
        return spec, Plan.from_layer_bits(quantize_(model, plan, spec)) if plan is not None else None

    def recipe(self, batch_norm: bool) -> Recipe:
        """This quantizer's default recipe (from scratch or from ``--init``, for a network with or
        without batch norm) with the values given explicitly in its place."""
        default = qat_recipe(self.quantizer, from_float=self.init is not None, batch_norm=batch_norm)
        return default.resolve(self.optimizer, self.lr, self.warmup_epochs)

    def train_config(self, batch_norm: bool) -> TrainConfig:
        return self.recipe(batch_norm).train_config(self.epochs, schedule=self.schedule,
                                                    weight_decay=self.weight_decay, device=self.device)

    def method_name(self) -> str:
        return "float" if self.quantizer == NO_QUANTIZER else self.quantizer

    def hooks(self, extra: MethodHooks | None) -> MethodHooks:
        """SinReQ and the grid distance for a quantized run, then the caller's hooks."""
        hooks = extra or MethodHooks()
        if self.quantizer == NO_QUANTIZER:
            return hooks
        return quantized_run_hooks(self.sinreq, self.sinreq_schedule, self.sinreq_domain, self.sinreq_mode,
                                   self.sinreq_train_quantizer).combine(hooks)


def float_run_options(options: RunOptions, out: str, epochs: int, **fields: Any) -> TrainOptions:
    """The float training a method starts from (DCQ's teacher, the search's float model): the same
    model, data, batch, seed and machine as ``options``, into ``out``."""
    same = {name: getattr(options, name) for name in ("model", "dataset", "data_dir", "batch_size", "seed",
                                                      "threads", "device")}
    return TrainOptions(**same, epochs=epochs, out=out, **fields)


def run_train(options: TrainOptions, hooks: MethodHooks | None = None, reporter: Reporter | None = None,
              command: str | None = None) -> dict[str, Any]:
    """Train as ``options`` say, write the run folder, return ``result.json``'s content.

    Launched by torchrun with more than one process: joins the process group (and leaves it at
    the end when it created it), trains with DDP; only rank 0 writes files.
    """
    options.validate()
    with processes(options.device) as info:
        hooks = options.hooks(hooks)
        # killed before its first checkpoint: --resume starts the run over in its folder (same result)
        started = start_run(options, reporter, command, info=info, resume=options.resume, init=options.init,
                            check=lambda folder: _check_folder(folder, options.resume, hooks),
                            val_fraction=options.val_fraction, width_mult=options.width_mult)
        model = started.model
        spec, plan = options.quantize(model)
        config = options.train_config(batch_norm=has_batch_norm(model))
        if info.world_size > 1:
            config = replace(config, device=info.device)  # cuda -> cuda:LOCAL_RANK
        method = options.method_name() + hooks.suffix
        restart = _write_config(started, method, config, hooks, plan)
        history = _train(started, config, hooks, restart)
        hooks.after_fit(model)
        accuracy = evaluate(model, started.eval_loader("test"), config.device)[1]
        val_loader = started.eval_loader("val")
        val_accuracy = evaluate(model, val_loader, config.device)[1] if val_loader is not None else None
        if started.is_main:
            save_model(started.folder.model_file, model, started.args, spec if plan is not None else None, plan)
            if plan is not None:
                write_weight_plot(model, started.folder.path,
                                  f"{options.model} {method}: weights u(w) and quantizer levels")
        health = check_health(model if plan is not None else None, history, started.data.num_classes,
                              accuracy=val_accuracy if val_accuracy is not None else accuracy,
                              accuracy_name="val" if val_accuracy is not None else "test")
        result = started.result(model, method, spec if plan else None, accuracy, val_accuracy=val_accuracy,
                                fp_accuracy=accuracy if plan is None else started.fp_accuracy,
                                epochs=options.epochs, **hooks.result_fields(model))
        return started.finish(result, health, "the run", f"test accuracy [bold]{100 * accuracy:.2f}%[/]  avg bits "
                              f"{result['avg_bits']:.2f}  size {result['size_bytes']:,} B "
                              f"({result['compression']:.1f}x smaller than float)")


def _write_config(started: StartedRun, method: str, config: TrainConfig, hooks: MethodHooks,
                  plan: Plan | None) -> bool:
    """config.yaml and plan.json (rank 0); True when --resume starts over a run killed before its first checkpoint."""
    options, folder = started.options, started.folder
    restart = options.resume and folder.started_without_checkpoint()
    started.write_config(method, resume=options.resume, resolved_lr=config.lr,
                         resolved_optimizer=config.optimizer, resolved_warmup_epochs=config.warmup_epochs,
                         **hooks.config)
    if started.is_main and options.resume:
        folder.remove_scratch()  # temp files of writes a kill interrupted
        if restart:
            started.reporter.log(f"{folder.path} has no checkpoint yet (stopped during its first epoch): "
                                 "starting over")
    if started.is_main and plan is not None:
        plan.save(folder.file("plan.json"))
    return restart


def _train(started: StartedRun, config: TrainConfig, hooks: MethodHooks, restart: bool) -> list[dict[str, Any]]:
    """``fit`` with the method's hooks, the metrics file and the health watch; the epoch history."""
    options, folder, model, main = started.options, started.folder, started.model, started.is_main
    val_loader = started.eval_loader("val")
    metrics = MetricsWriter(folder.metrics if main else None,
                            folder.file("tensorboard") if options.tensorboard and main else None)
    if restart:
        metrics.truncate_after(-1)  # lines of epochs whose checkpoint was never written
    watch = HealthWatch(started.data.num_classes, options.epochs, started.reporter) if main else None
    try:
        hooks.before_fit(model)
        return fit(model, started.train_loader(), config,
                   eval_loader=val_loader if val_loader is not None else started.eval_loader("test"),
                   eval_name="test" if val_loader is None else "val",
                   loss_terms=[*hooks.loss_terms(model), *aux_loss_terms(model)], callbacks=hooks.callbacks,
                   no_decay=is_quantizer_param, checkpoint_path=folder.checkpoint,
                   resume=options.resume and not restart, metrics=metrics, reporter=started.reporter,
                   watch=watch).history
    finally:
        metrics.close()


def _check_folder(folder: RunFolder, resume: bool, hooks: MethodHooks) -> None:
    folder.check(resume)
    if resume and folder.started_without_checkpoint():
        _check_train_config(folder, hooks)


def _check_train_config(run: RunFolder, hooks: MethodHooks) -> None:
    """Starting a run over is only for a ``lowbit train`` run: refuse another command's folder."""
    saved = run.read_config()
    known = {*TrainOptions.__dataclass_fields__, "out", "method", "resolved_lr", "resolved_optimizer",
             "resolved_warmup_epochs", *hooks.config}
    foreign = sorted(str(k) for k in saved if k not in known)
    if foreign:
        raise CheckpointError(f"--resume: {run.path} holds no checkpoint and its config.yaml is not a "
                              f"'lowbit train' run's (keys {', '.join(foreign[:3])}); nothing to resume")
