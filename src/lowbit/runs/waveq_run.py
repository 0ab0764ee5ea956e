"""``lowbit waveq``: learn a heterogeneous per-layer plan with WaveQ and write a run folder.

The Python entry point is :func:`run_waveq` with :class:`WaveQOptions`. The run folder holds
config.yaml, metrics.jsonl (one line per WaveQ epoch with β, α and the integer plan per layer,
then one per fine-tune epoch, told apart by ``phase``), plan.json (integer bits), result.json,
model.ckpt (the quantized fine-tuned model) and plots/beta.png (β per layer over training).
Under ``torchrun --nproc-per-node N -m lowbit waveq ...`` both phases train with DDP, as
``lowbit train`` does: ``--batch-size`` is the global batch (divisible by N) and rank 0 alone
writes the run folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from lowbit.costs import model_costs
from lowbit.data import ArrayLoader, list_datasets
from lowbit.errors import ConfigError, unknown_name
from lowbit.health import check_health
from lowbit.models import model_info
from lowbit.quant.bits import FLOAT_BITS, check_bits
from lowbit.quant.registry import FAMILIES, QuantizerSpec
from lowbit.recipes import QUANTIZED_FINETUNE, WAVEQ_EPOCHS, WAVEQ_FINETUNE_EPOCHS, WAVEQ_PHASE, WAVEQ_SCALE
from lowbit.reg.waveq import ROUNDINGS, WEIGHTINGS, WaveQ, WaveQConfig
from lowbit.reg.waveq_method import waveq_quantize
from lowbit.report.bits_plot import plot_beta_curves
from lowbit.runs.finish import finish_run
from lowbit.runs.folder import RunFolder
from lowbit.runs.model_io import resolve_model_file, save_model
from lowbit.runs.result_fields import model_fields, record_fields
from lowbit.runs.start import check_global_batch, start_model, train_loader
from lowbit.train import QUIET, MetricsWriter, Reporter, TrainConfig, evaluate
from lowbit.train.distributed import DistInfo, barrier, cleanup, init_distributed

WAVEQ_QUANTIZERS = tuple(sorted(FAMILIES))  # every family carries its geometry at continuous bits


@dataclass
class WaveQOptions:
    model: str = "lenet5"
    dataset: str = "digits"
    data_dir: str | None = None
    quantizer: str = "dorefa"
    scale: str = WAVEQ_SCALE  # the fine-tune quantizer's output scale, seeded with α
    abits: int = FLOAT_BITS
    budget: float | None = None  # target average bits (over all quantized layers, pins included)
    weighting: str = "layers"  # budget over layers (avg_bits) or parameters (weighted_bits)
    lambda_w: float = 1.0
    lambda_beta: float = 0.05  # c_β of the three-phase λ_β
    bits_min: float = 2.0
    bits_max: float = 8.0
    rounding: str = "round"
    epochs: int = WAVEQ_EPOCHS  # WaveQ phase
    finetune_epochs: int = WAVEQ_FINETUNE_EPOCHS
    lr: float | None = None  # WaveQ phase: the recipe's (lowbit.recipes.WAVEQ_PHASE, by --init)
    finetune_lr: float | None = None  # the recipe's (lowbit.recipes.QUANTIZED_FINETUNE)
    domain: str = "aligned"
    batch_size: int = 64
    optimizer: str | None = None  # None: the recipe's
    weight_decay: float = 5e-4
    init: str | None = None  # float run folder or model file to start from
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    out: str | None = None
    strict: bool = False  # exit non-zero when the run fails its health checks (lowbit.health)

    def validate(self) -> None:
        model_info(self.model)
        if self.dataset not in list_datasets():
            raise unknown_name("dataset", self.dataset, list_datasets())
        if self.quantizer not in WAVEQ_QUANTIZERS:
            raise ConfigError(f"WaveQ fine-tunes with {', '.join(WAVEQ_QUANTIZERS)}; got {self.quantizer!r}")
        for name, low in (("epochs", 0), ("finetune_epochs", 0), ("batch_size", 1), ("seed", 0), ("threads", 1)):
            value = getattr(self, name)
            if value is None and name == "threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        check_bits(self.abits, None, what="--abits value")
        if self.weighting not in WEIGHTINGS or self.rounding not in ROUNDINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS} and rounding one of {ROUNDINGS}")
        QuantizerSpec(self.quantizer, scale=self.scale)
        self.waveq_config()
        self.train_config()
        self.finetune_config()

    def waveq_config(self) -> WaveQConfig:
        return WaveQConfig(quantizer=self.quantizer, domain=self.domain, lambda_w=self.lambda_w,
                           c_beta=self.lambda_beta,
                           budget=self.budget, weighting=self.weighting, bits_min=self.bits_min,
                           bits_max=self.bits_max, beta_init=self.bits_max, rounding=self.rounding)

    def train_config(self) -> TrainConfig:
        recipe = WAVEQ_PHASE[self.init is not None].resolve(self.optimizer, self.lr)
        return recipe.train_config(self.epochs, weight_decay=self.weight_decay, device=self.device)

    def finetune_config(self) -> TrainConfig:
        recipe = QUANTIZED_FINETUNE.resolve(self.optimizer, self.finetune_lr)
        return recipe.train_config(self.finetune_epochs, weight_decay=self.weight_decay, device=self.device)

    def method_name(self) -> str:
        return f"waveq-{self.quantizer}"

    def default_out(self) -> str:
        budget = f"-b{self.budget:g}" if self.budget is not None else ""
        return f"runs/{self.model}-{self.dataset}-{self.method_name()}{budget}-s{self.seed}"


def run_waveq(options: WaveQOptions, reporter: Reporter | None = None, command: str | None = None) -> dict[str, Any]:
    """Run WaveQ as ``options`` say, write the run folder, return ``result.json``'s content."""
    options.validate()
    info = init_distributed(options.device)
    try:
        return _run_waveq(options, reporter, command, info)
    finally:
        cleanup(info)


def _run_waveq(options: WaveQOptions, reporter: Reporter | None, command: str | None,
               info: DistInfo) -> dict[str, Any]:
    reporter = (reporter or Reporter()) if info.is_main else QUIET
    check_global_batch(options.batch_size, info.world_size)
    written = options  # config.yaml records the options as given ("cuda", not "cuda:LOCAL_RANK")
    if info.world_size > 1:
        options = replace(options, device=info.device)
    if options.init is not None:
        resolve_model_file(options.init)
    run = RunFolder(options.out or options.default_out())
    run.check(False)
    start = time.perf_counter()
    args, data, net, fp_accuracy = start_model(options.model, options.dataset, options.data_dir, seed=options.seed,
                                               threads=options.threads, init=options.init, reporter=reporter)
    spec = QuantizerSpec(options.quantizer, scale=options.scale)
    config = options.waveq_config()
    WaveQ(net, config)  # budget feasibility and layer checks before a folder exists (net is not changed)

    barrier()  # every rank has checked the folder before rank 0 creates it
    if info.is_main:
        run.prepare(False)
        run.write_config({**asdict(written), "out": str(run.path), "method": options.method_name(),
                          "resolved_lr": options.train_config().lr,
                          "resolved_finetune_lr": options.finetune_config().lr, "waveq": config.to_dict()})
    loader = train_loader(data, options.batch_size, options.seed, info)
    test_loader = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    metrics = MetricsWriter(run.metrics if info.is_main else None)
    try:
        outcome = waveq_quantize(net, loader, waveq=config, train=options.train_config(), quantizer=spec,
                                 finetune=options.finetune_config(), act_bits=options.abits,
                                 eval_loader=test_loader, metrics=metrics, reporter=reporter)
    finally:
        metrics.close()
    model = outcome.model
    _, accuracy = evaluate(model, test_loader, options.device)
    if info.is_main:
        outcome.plan.save(run.file("plan.json"))
        save_model(run.model_file, model, args, spec, outcome.plan)
        plot_beta_curves([r["waveq_beta"] for r in outcome.waveq_history], outcome.bits,
                         run.file("plots") / "beta.png",
                         f"{options.model} WaveQ ({options.quantizer}): learned bits per layer")

    costs = model_costs(model)
    health = check_health(model, outcome.waveq_history + outcome.finetune_history, data.num_classes,
                          accuracy=accuracy)
    result = {
        **record_fields(command, start),
        "model": options.model, "model_args": args.to_dict(), "dataset": data.name, "data": data.description,
        "method": options.method_name(), "quantizer": spec.to_dict(), "seed": options.seed,
        "accuracy": accuracy, "fp_accuracy": fp_accuracy,
        **model_fields(model),
        "waveq": {**config.to_dict(), "beta": outcome.beta, "alpha": outcome.alpha,
                  "epochs": options.epochs, "finetune_epochs": options.finetune_epochs,
                  "waveq_wall_s": outcome.waveq_wall_s, "finetune_wall_s": outcome.finetune_wall_s,
                  "accuracy_before_finetune": outcome.accuracy_before_finetune},
    }
    if info.world_size > 1:
        result["world_size"] = info.world_size
    if not info.is_main:
        return result
    return finish_run(run, result, health, reporter=reporter, what="the WaveQ run", strict=options.strict,
                      summary=f"test accuracy [bold]{100 * accuracy:.2f}%[/]  avg bits {costs.avg_bits:.2f}  "
                      f"weighted bits {costs.weighted_bits:.2f}  size {costs.size_bytes:,} B")
