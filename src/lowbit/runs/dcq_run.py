"""``lowbit dcq``: quantize a float teacher by divide-and-conquer distillation and write a run folder.

The Python entry point is :func:`run_dcq` with :class:`DcqOptions`; the CLI only turns flags and
YAML into options. The teacher is a float run folder or model file (``teacher``), or a zoo model
(``model``) that is first trained in float into ``OUT/teacher`` (a run folder of its own). The
run folder holds config.yaml, metrics.jsonl (one line per section epoch, then the fine-tune
epochs), result.json, plan.json and model.ckpt (the stitched quantized network, which
``lowbit.runs.model_io.load_model`` rebuilds).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.distill import BALANCES, FEATURE_LOSSES, MODES, DCQConfig, dcq_quantize, split, split_points
from lowbit.errors import ConfigError, did_you_mean
from lowbit.health import check_health
from lowbit.models import list_models
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.quant.registry import SCALE_CHOICES, QuantizerSpec
from lowbit.recipes import DCQ_SCALE, DCQ_SECTIONS, OPTIMIZER_LR
from lowbit.runs.build import ModelArgs, check_data_fits
from lowbit.runs.lifecycle import start_run
from lowbit.runs.model_io import float_model_args, load_float_weights, save_model
from lowbit.runs.options import ExecutorOptions, check_plan_flags, option, plan_from, quantizer_names
from lowbit.runs.train_run import float_run_options, run_train
from lowbit.train import MetricsWriter, Reporter, TrainConfig, evaluate
from lowbit.train.config import OPTIMIZERS, SCHEDULES

TEACHER_DIR = "teacher"


@dataclass
class DcqOptions(ExecutorOptions):
    teacher: str | None = option(None, "float teacher: a run folder or a model file")
    model: str | None = option(None, "instead of --teacher: train this zoo model in float first",
                               choices=list_models)
    sections: int | None = option(None, "cut into K sections automatically", low=1, metavar="K")
    split_at: str | None = option(None, "instead of --sections: top-level child names that start sections 2..K",
                                  metavar="A,B,...")
    balance: str = option("params", "automatic split balances", choices=BALANCES)
    wbits: int | None = option(None, "weight bits 1..8 (first/last layers stay 8)")
    abits: int | None = option(None, "activation bits 1..8 or 32", default_text=32)
    scale: str = option(DCQ_SCALE, "weight output scale (a section must match the teacher's feature magnitudes; "
                        "auto = lowbit train's default)", choices=SCALE_CHOICES)
    plan: str | None = option(None, "plan JSON file (per-layer bits); instead of --wbits/--abits")
    mode: str = option("independent", "section inputs from the teacher (independent, the paper) or from the "
                       "already trained student sections (sequential)", choices=lambda: MODES)
    loss: str = option("mse", "feature loss", choices=lambda: tuple(FEATURE_LOSSES))  # DCQConfig checks
    workers: int = option(1, "train sections in N processes (independent mode; workers use 1 thread)", low=1,
                          metavar="N")
    epochs: int = option(10, "epochs per section", low=0)
    finetune_epochs: int = option(0, "end-to-end quantized fine-tune after stitching", low=0)
    finetune_lr: float | None = option(None, "fine-tune learning rate", default_text="the sections'")
    teacher_epochs: int = option(10, "float teacher epochs with --model", low=0)
    teacher_lr: float | None = option(None, "float teacher learning rate with --model",
                                      default_text="lowbit train's")
    lr: float | None = option(None, "section learning rate", default_text=f"{DCQ_SECTIONS.describe()}; "
                              f"{OPTIMIZER_LR['adam']:g} with --optimizer adam")
    optimizer: str | None = option(None, "optimizer", choices=OPTIMIZERS, default_text=DCQ_SECTIONS.optimizer)
    schedule: str = option("cosine", "LR schedule", choices=SCHEDULES)
    weight_decay: float = option(5e-4, "weight decay")
    kd_weight: float = option(0.0, "logit distillation weight on the last section")
    kd_temperature: float = option(4.0, "logit distillation temperature")
    feature_cache: str | None = option(None, "cache the teacher features in DIR (memory-mapped, reused when they "
                                       "match)", metavar="DIR", default_text="computed on the fly")
    feature_norm: bool = option(True, "feature losses in units of the teacher features' RMS at each boundary "
                                "(--no-feature-norm: the plain loss)")
    width_mult: float = option(1.0, "widen the model (with --model)")

    def validate(self) -> None:
        if (self.teacher is None) == (self.model is None):
            raise ConfigError("give either --teacher RUN_DIR_OR_CHECKPOINT or --model NAME (trains the float "
                              "teacher first), not both" if self.teacher else
                              "give --teacher RUN_DIR_OR_CHECKPOINT or --model NAME (trains the float teacher first)")
        super().validate()
        if (self.sections is None) == (self.split_at is None):
            raise ConfigError("give either --sections K or --split-at NAME,NAME,... (not both)" if self.sections
                              else "give --sections K or --split-at NAME,NAME,... to say where to cut the teacher")
        if self.split_at is not None and not self.split_points():
            raise ConfigError("--split-at needs at least one child name")
        if self.quantizer not in quantizer_names():
            raise ConfigError(f"DCQ needs a quantizer: {self.quantizer!r} is not one of "
                              f"{', '.join(quantizer_names())}{did_you_mean(self.quantizer, quantizer_names())}")
        check_plan_flags(self.plan, self.wbits, self.abits)
        if self.plan is None and self.wbits is None:
            raise ConfigError("give the weight bits (--wbits K) or a plan (--plan FILE)")
        self.dcq_config()  # mode, loss, workers, kd and training values

    def split_points(self) -> list[str]:
        return [p.strip() for p in (self.split_at or "").split(",") if p.strip()]

    def build_plan(self) -> Plan:
        return plan_from(self.plan, self.wbits, self.abits)

    def _train_config(self, epochs: int, lr: float | None) -> TrainConfig:
        return DCQ_SECTIONS.resolve(self.optimizer, lr).train_config(
            epochs, schedule=self.schedule, weight_decay=self.weight_decay, device=self.device)

    def dcq_config(self) -> DCQConfig:
        return DCQConfig(mode=self.mode, loss=self.loss, train=self._train_config(self.epochs, self.lr),
                         kd_weight=self.kd_weight, kd_temperature=self.kd_temperature, workers=self.workers,
                         executor=self.executor, ray_address=self.ray_address, seed=self.seed,
                         feature_cache=self.feature_cache, feature_norm=self.feature_norm,
                         finetune=self._train_config(self.finetune_epochs, self.finetune_lr if
                                                     self.finetune_lr is not None else self.lr)
                         if self.finetune_epochs else None)

    def method_name(self) -> str:
        return f"dcq-{self.quantizer}"

    def default_out(self) -> str:
        name = self.model or "teacher"
        return f"runs/{name}-{self.dataset}-{self.method_name()}-w{self.wbits or 'plan'}-s{self.seed}"


def cut_teacher(options: DcqOptions, teacher: nn.Module, args: ModelArgs, spec: QuantizerSpec,
                plan: Plan) -> list[nn.Module]:
    """The teacher's sections as the options say, with every user error (split names, plan entries,
    bits the quantizer rejects) raised before any training."""
    at = options.split_points() if options.split_at is not None else None
    sections = split(teacher, at, sections=options.sections, balance=options.balance,
                     sample_input=args.sample_input())
    quantize_(copy.deepcopy(teacher), plan, spec)
    return sections


def run_dcq(options: DcqOptions, reporter: Reporter | None = None, command: str | None = None) -> dict[str, Any]:
    """Run DCQ as ``options`` say, write the run folder, return ``result.json``'s content."""
    options.validate()
    spec, plan = QuantizerSpec(options.quantizer, scale=options.scale), options.build_plan()
    teacher_args = float_model_args(options.teacher) if options.teacher is not None else None
    started = start_run(options, reporter, command, model=teacher_args.name if teacher_args else options.model,
                        width_mult=teacher_args.width_mult if teacher_args else options.width_mult)
    teacher, folder, reporter = started.model, started.folder, started.reporter
    if teacher_args is not None:
        check_data_fits(teacher_args, started.args, options.dataset)
        load_float_weights(teacher, options.teacher)
    points = split_points(cut_teacher(options, teacher, started.args, spec, plan))
    started.write_config(options.method_name(), resolved_split_at=points)
    if options.model is not None:
        reporter.log(f"training the float teacher ({options.teacher_epochs} epochs) -> {folder.file(TEACHER_DIR)}")
        run_train(float_run_options(options, str(folder.file(TEACHER_DIR)), options.teacher_epochs,
                                    lr=options.teacher_lr, optimizer=options.optimizer, schedule=options.schedule,
                                    weight_decay=options.weight_decay, width_mult=options.width_mult),
                  reporter=reporter, command=command)
        load_float_weights(teacher, folder.file(TEACHER_DIR))

    test_loader = started.eval_loader("test")
    fp_accuracy = evaluate(teacher, test_loader, options.device)[1]
    reporter.log(f"float teacher: test accuracy {100 * fp_accuracy:.2f}%")
    metrics = MetricsWriter(folder.metrics)
    try:
        torch.manual_seed(options.seed)
        outcome = dcq_quantize(teacher, started.train_loader(), plan=plan, quantizer=spec, split_at=points or None,
                               sections=None if points else 1, config=options.dcq_config(), eval_loader=test_loader,
                               metrics=metrics, reporter=reporter)
    finally:
        metrics.close()
    model, final_plan = outcome.model, Plan.from_layer_bits(outcome.bits)
    final_plan.save(folder.file("plan.json"))
    save_model(folder.model_file, model, started.args, spec, final_plan)

    health = check_health(model, outcome.finetune_history, started.data.num_classes, accuracy=outcome.accuracy)
    sections = [s.to_dict() for s in outcome.sections]
    result = started.result(
        model, options.method_name(), spec, outcome.accuracy, stitched_accuracy=outcome.stitched_accuracy,
        fp_accuracy=fp_accuracy, mode=options.mode, loss=options.loss, workers=options.workers,
        executor=options.executor,
        balance=options.balance, split_at=outcome.split_at, num_sections=len(sections), epochs=options.epochs,
        finetune_epochs=options.finetune_epochs, kd_weight=options.kd_weight, kd_temperature=options.kd_temperature,
        feature_cache=options.feature_cache, feature_norm=options.feature_norm,
        section_losses=[s["final_loss"] for s in sections], section_wall_s=[s["wall_s"] for s in sections],
        sections_wall_s=outcome.sections_wall_s, sections=sections,
        teacher=options.teacher if options.teacher is not None else str(folder.file(TEACHER_DIR)),
        teacher_epochs=options.teacher_epochs if options.model is not None else None)
    return started.finish(result, health, "the DCQ run", f"test accuracy [bold]{100 * outcome.accuracy:.2f}%[/] "
                          f"(float teacher {100 * fp_accuracy:.2f}%)  avg bits {result['avg_bits']:.2f}  "
                          f"size {result['size_bytes']:,} B")
