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
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lowbit.costs import model_costs
from lowbit.data import ArrayLoader, list_datasets
from lowbit.distill import BALANCES, DCQConfig, dcq_quantize, split, split_points
from lowbit.errors import ConfigError, did_you_mean, unknown_name
from lowbit.health import check_health
from lowbit.models import model_info
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.quant.bits import FLOAT_BITS, check_bits
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec, list_quantizers
from lowbit.recipes import DCQ_SCALE, DCQ_SECTIONS
from lowbit.runs.build import ModelArgs, check_data_fits, load_model_and_data
from lowbit.runs.finish import finish_run
from lowbit.runs.folder import RunFolder
from lowbit.runs.model_io import load_model, resolve_model_file, save_model
from lowbit.runs.result_fields import model_fields, record_fields
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import MetricsWriter, Reporter, TrainConfig, evaluate

TEACHER_DIR = "teacher"


@dataclass
class DcqOptions:
    teacher: str | None = None  # a float run folder or model file
    model: str | None = None  # or a zoo model whose float teacher is trained first
    dataset: str = "digits"
    data_dir: str | None = None
    sections: int | None = None
    split_at: str | None = None  # comma-separated child names starting sections 2..K
    balance: str = "params"
    quantizer: str = "dorefa"
    wbits: int | None = None
    abits: int | None = None
    scale: str = DCQ_SCALE  # DCQ's choice: sections must match feature magnitudes (lowbit.distill.dcq)
    plan: str | None = None
    mode: str = "independent"
    loss: str = "mse"
    workers: int = 1
    epochs: int = 10  # per section
    finetune_epochs: int = 0
    finetune_lr: float | None = None  # default: the sections' lr
    teacher_epochs: int = 10  # float teacher training (with --model)
    teacher_lr: float | None = None  # default: lowbit train's
    batch_size: int = 64
    lr: float | None = None  # sections: the recipe's (lowbit.recipes.DCQ_SECTIONS)
    optimizer: str | None = None  # None: the recipe's
    schedule: str = "cosine"
    weight_decay: float = 5e-4
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    feature_cache: str | None = None  # folder for memory-mapped teacher features (default: on the fly)
    feature_norm: bool = True  # feature losses in units of the teacher features' RMS (lowbit.distill.dcq)
    width_mult: float = 1.0  # with --model
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    out: str | None = None
    strict: bool = False  # exit non-zero when the run fails its health checks (lowbit.health)

    def validate(self) -> None:
        if (self.teacher is None) == (self.model is None):
            raise ConfigError("give either --teacher RUN_DIR_OR_CHECKPOINT or --model NAME (trains the float "
                              "teacher first), not both" if self.teacher else
                              "give --teacher RUN_DIR_OR_CHECKPOINT or --model NAME (trains the float teacher first)")
        if self.model is not None:
            model_info(self.model)
        if self.dataset not in list_datasets():
            raise unknown_name("dataset", self.dataset, list_datasets())
        if (self.sections is None) == (self.split_at is None):
            raise ConfigError("give either --sections K or --split-at NAME,NAME,... (not both)" if self.sections
                              else "give --sections K or --split-at NAME,NAME,... to say where to cut the teacher")
        if self.split_at is not None and not self.split_points():
            raise ConfigError("--split-at needs at least one child name")
        for name, low in (("sections", 1), ("workers", 1), ("epochs", 0), ("finetune_epochs", 0),
                          ("teacher_epochs", 0), ("batch_size", 1), ("seed", 0), ("threads", 1)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.balance not in BALANCES:
            raise ConfigError(f"unknown balance {self.balance!r}{did_you_mean(self.balance, BALANCES)}; "
                              f"choose one of {', '.join(BALANCES)}")
        if self.quantizer == NO_QUANTIZER or self.quantizer not in list_quantizers():
            choices = [q for q in list_quantizers() if q != NO_QUANTIZER]
            raise ConfigError(f"DCQ needs a quantizer: {self.quantizer!r} is not one of {', '.join(choices)}"
                              f"{did_you_mean(self.quantizer, choices)}")
        if self.plan is not None and (self.wbits is not None or self.abits is not None):
            raise ConfigError("give either --plan or --wbits/--abits, not both")
        if self.plan is None and self.wbits is None:
            raise ConfigError("give the weight bits (--wbits K) or a plan (--plan FILE)")
        for flag, bits in (("--wbits", self.wbits), ("--abits", self.abits)):
            if bits is not None:
                check_bits(bits, None, what=f"{flag} value")
        self.dcq_config()  # mode, loss, workers, kd and training values

    def split_points(self) -> list[str]:
        return [p.strip() for p in (self.split_at or "").split(",") if p.strip()]

    def build_plan(self) -> Plan:
        if self.plan is not None:
            return Plan.load(self.plan)
        return Plan.uniform(self.wbits, self.abits if self.abits is not None else FLOAT_BITS)

    def _train_config(self, epochs: int, lr: float | None) -> TrainConfig:
        return DCQ_SECTIONS.resolve(self.optimizer, lr).train_config(
            epochs, schedule=self.schedule, weight_decay=self.weight_decay, device=self.device)

    def dcq_config(self) -> DCQConfig:
        return DCQConfig(mode=self.mode, loss=self.loss, train=self._train_config(self.epochs, self.lr),
                         kd_weight=self.kd_weight, kd_temperature=self.kd_temperature, workers=self.workers,
                         seed=self.seed, feature_cache=self.feature_cache, feature_norm=self.feature_norm,
                         finetune=self._train_config(self.finetune_epochs, self.finetune_lr if
                                                     self.finetune_lr is not None else self.lr)
                         if self.finetune_epochs else None)

    def method_name(self) -> str:
        return f"dcq-{self.quantizer}"

    def default_out(self) -> str:
        name = self.model or "teacher"
        return f"runs/{name}-{self.dataset}-{self.method_name()}-w{self.wbits or 'plan'}-s{self.seed}"


def _load_teacher(path: str) -> tuple[torch.nn.Module, ModelArgs]:
    model, args, spec, _ = load_model(path)
    if spec is not None and spec.name != NO_QUANTIZER:
        raise ConfigError(f"--teacher {path} is a quantized model ({spec.name}); DCQ starts from a float teacher")
    return model, args


def sample_input(args: ModelArgs) -> torch.Tensor:
    """One zero input of the model's shape (for MAC counts)."""
    spatial = 2 if model_info(args.name).kind == "image" else 1
    return torch.zeros(1, args.in_channels, *([args.input_size] * spatial))


def run_dcq(options: DcqOptions, reporter: Reporter | None = None, command: str | None = None) -> dict[str, Any]:
    """Run DCQ as ``options`` say, write the run folder, return ``result.json``'s content."""
    reporter = reporter or Reporter()
    options.validate()
    spec = QuantizerSpec(options.quantizer, scale=options.scale)
    plan = options.build_plan()
    if options.teacher is not None:
        resolve_model_file(options.teacher)  # fail before any work if it is missing
    run = RunFolder(options.out or options.default_out())
    run.check(False)
    start = time.perf_counter()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)

    if options.teacher is not None:
        teacher, args = _load_teacher(options.teacher)
        data_args, data, note = load_model_and_data(args.name, options.dataset, options.data_dir, seed=options.seed,
                                                    width_mult=args.width_mult)
        check_data_fits(args, data_args, options.dataset)
    else:
        args, data, note = load_model_and_data(options.model, options.dataset, options.data_dir, seed=options.seed,
                                               width_mult=options.width_mult)
        teacher = args.build()
    reporter.log(f"[bold]{args.name}[/] on [bold]{data.name}[/]: {data.description}")
    reporter.log(note)
    # every user error (split names, plan entries, bits the quantizer rejects) before any training
    at = options.split_points() if options.split_at is not None else None
    probe = split(teacher, at, sections=options.sections, balance=options.balance, sample_input=sample_input(args))
    points = split_points(probe)
    quantize_(copy.deepcopy(teacher), plan, spec)

    run.prepare(False)
    run.write_config({**asdict(options), "out": str(run.path), "method": options.method_name(),
                      "resolved_split_at": points})
    teacher_result = None
    if options.model is not None:
        reporter.log(f"training the float teacher ({options.teacher_epochs} epochs) -> {run.file(TEACHER_DIR)}")
        teacher_result = run_train(TrainOptions(
            model=options.model, dataset=options.dataset, data_dir=options.data_dir, epochs=options.teacher_epochs,
            batch_size=options.batch_size, lr=options.teacher_lr, optimizer=options.optimizer,
            schedule=options.schedule, weight_decay=options.weight_decay, seed=options.seed,
            width_mult=options.width_mult, out=str(run.file(TEACHER_DIR)), device=options.device,
            threads=options.threads), reporter=reporter, command=command)
        teacher, _ = _load_teacher(str(run.file(TEACHER_DIR)))

    train_loader = ArrayLoader(data.train, batch_size=options.batch_size, shuffle=True, seed=options.seed,
                               mean=data.mean, std=data.std)
    test_loader = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    fp_accuracy = evaluate(teacher, test_loader, options.device)[1]
    reporter.log(f"float teacher: test accuracy {100 * fp_accuracy:.2f}%")
    config = options.dcq_config()
    metrics = MetricsWriter(run.metrics)
    try:
        torch.manual_seed(options.seed)
        outcome = dcq_quantize(teacher, train_loader, plan=plan, quantizer=spec, split_at=points or None,
                      sections=None if points else 1, config=config, eval_loader=test_loader, metrics=metrics,
                      reporter=reporter)
    finally:
        metrics.close()
    model = outcome.model
    final_plan = Plan.from_layer_bits(outcome.bits)
    final_plan.save(run.file("plan.json"))
    save_model(run.model_file, model, args, spec, final_plan)

    costs = model_costs(model)
    health = check_health(model, outcome.finetune_history, data.num_classes, accuracy=outcome.accuracy)
    sections = [s.to_dict() for s in outcome.sections]
    result = {
        **record_fields(command, start),
        "model": args.name, "model_args": args.to_dict(), "dataset": data.name, "data": data.description,
        "method": options.method_name(), "quantizer": spec.to_dict(), "seed": options.seed,
        "accuracy": outcome.accuracy, "stitched_accuracy": outcome.stitched_accuracy, "fp_accuracy": fp_accuracy,
        **model_fields(model),
        "mode": options.mode, "loss": options.loss, "workers": options.workers, "balance": options.balance,
        "split_at": outcome.split_at, "num_sections": len(sections), "epochs": options.epochs,
        "finetune_epochs": options.finetune_epochs, "kd_weight": options.kd_weight,
        "kd_temperature": options.kd_temperature, "feature_cache": options.feature_cache,
        "feature_norm": options.feature_norm,
        "section_losses": [s["final_loss"] for s in sections], "section_wall_s": [s["wall_s"] for s in sections],
        "sections_wall_s": outcome.sections_wall_s, "sections": sections,
        "teacher": options.teacher if options.teacher is not None else str(run.file(TEACHER_DIR)),
        "teacher_epochs": options.teacher_epochs if teacher_result is not None else None,
    }
    return finish_run(run, result, health, reporter=reporter, what="the DCQ run", strict=options.strict,
                      summary=f"test accuracy [bold]{100 * outcome.accuracy:.2f}%[/] (float teacher "
                      f"{100 * fp_accuracy:.2f}%)  avg bits {costs.avg_bits:.2f}  size {costs.size_bytes:,} B")
