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

from dataclasses import dataclass, replace
from typing import Any

from lowbit.errors import ConfigError
from lowbit.health import check_health
from lowbit.quant.bits import FLOAT_BITS, check_bits
from lowbit.quant.registry import FAMILIES, SCALE_CHOICES, QuantizerSpec
from lowbit.recipes import QUANTIZED_FINETUNE, WAVEQ_EPOCHS, WAVEQ_FINETUNE_EPOCHS, WAVEQ_PHASE, WAVEQ_SCALE
from lowbit.reg.waveq import DOMAINS, ROUNDINGS, WEIGHTINGS, WaveQ, WaveQConfig
from lowbit.reg.waveq_method import waveq_quantize
from lowbit.report.bits_plot import plot_beta_curves
from lowbit.runs.lifecycle import processes, start_run
from lowbit.runs.model_io import save_model
from lowbit.runs.options import RunOptions, option
from lowbit.train import MetricsWriter, Reporter, TrainConfig, evaluate
from lowbit.train.config import OPTIMIZERS

WAVEQ_QUANTIZERS = tuple(sorted(FAMILIES))  # every family carries its geometry at continuous bits


@dataclass
class WaveQOptions(RunOptions):
    quantizer: str = option("dorefa", "level geometry of the sinusoid and the fine-tune's quantizer",
                            choices=WAVEQ_QUANTIZERS)
    scale: str = option(WAVEQ_SCALE, "the fine-tune's weight output scale, started at WaveQ's alpha",
                        choices=SCALE_CHOICES)
    init: str | None = option(None, "float weights to start from: a run folder or model file (recommended)")
    abits: int = option(FLOAT_BITS, "activation bits for the fine-tune, 1..8 or 32")
    budget: float | None = option(None, "target average bits over all quantized layers (pinned first/last "
                                  "included); without it the bit pressure is the paper's sum of bits",
                                  metavar="AVG_BITS")
    weighting: str = option("layers", "budget averaged over layers (avg_bits) or parameters (weighted_bits)",
                            choices=WEIGHTINGS)
    lambda_w: float = option(1.0, "weight of the sinusoid")
    lambda_beta: float = option(0.05, "weight c_beta of the three-phase bit pressure")
    bits_min: float = option(2.0, "lowest bitwidth a layer may learn")
    bits_max: float = option(8.0, "highest bitwidth, and beta's start")
    rounding: str = option("round", "continuous beta -> integer bits", choices=ROUNDINGS)
    epochs: int = option(WAVEQ_EPOCHS, "WaveQ phase epochs", low=0)
    finetune_epochs: int = option(WAVEQ_FINETUNE_EPOCHS, "quantized fine-tune epochs at the plan", low=0)
    lr: float | None = option(None, "WaveQ phase learning rate", default_text=f"{WAVEQ_PHASE[True].lr:g} with "
                              f"--init, else {WAVEQ_PHASE[False].lr:g} (lowbit.recipes)")
    finetune_lr: float | None = option(None, "fine-tune learning rate", default_text=QUANTIZED_FINETUNE.lr)
    domain: str = option("aligned", "sinusoid on the quantizer's own map at scale alpha (aligned) or on "
                         "w/alpha (raw, METHODS' formula; equal except for DoReFa)", choices=DOMAINS)
    optimizer: str | None = option(None, "optimizer", choices=OPTIMIZERS, default_text="the recipe's")
    weight_decay: float = option(5e-4, "weight decay")

    def validate(self) -> None:
        super().validate()
        check_bits(self.abits, None, what="--abits value")
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
    with processes(options.device) as info:
        started = start_run(options, reporter, command, info=info, init=options.init)
        # config.yaml records the options as given ("cuda", not "cuda:LOCAL_RANK")
        ranked = replace(options, device=info.device) if info.world_size > 1 else options
        spec, config = QuantizerSpec(options.quantizer, scale=options.scale), options.waveq_config()
        WaveQ(started.model, config)  # budget feasibility and layer checks before a folder exists (no change)
        started.write_config(options.method_name(), resolved_lr=options.train_config().lr,
                             resolved_finetune_lr=options.finetune_config().lr, waveq=config.to_dict())
        test_loader = started.eval_loader("test")
        metrics = MetricsWriter(started.folder.metrics if started.is_main else None)
        try:
            outcome = waveq_quantize(started.model, started.train_loader(), waveq=config,
                                     train=ranked.train_config(), quantizer=spec, finetune=ranked.finetune_config(),
                                     act_bits=options.abits, eval_loader=test_loader, metrics=metrics,
                                     reporter=started.reporter)
        finally:
            metrics.close()
        model = outcome.model
        accuracy = evaluate(model, test_loader, ranked.device)[1]
        if started.is_main:
            outcome.plan.save(started.folder.file("plan.json"))
            save_model(started.folder.model_file, model, started.args, spec, outcome.plan)
            plot_beta_curves([r["waveq_beta"] for r in outcome.waveq_history], outcome.bits,
                             started.folder.file("plots") / "beta.png",
                             f"{options.model} WaveQ ({options.quantizer}): learned bits per layer")
        health = check_health(model, outcome.waveq_history + outcome.finetune_history, started.data.num_classes,
                              accuracy=accuracy)
        result = started.result(model, options.method_name(), spec, accuracy, waveq={
            **config.to_dict(), "beta": outcome.beta, "alpha": outcome.alpha, "epochs": options.epochs,
            "finetune_epochs": options.finetune_epochs, "waveq_wall_s": outcome.waveq_wall_s,
            "finetune_wall_s": outcome.finetune_wall_s, "accuracy_before_finetune": outcome.accuracy_before_finetune})
        return started.finish(result, health, "the WaveQ run", f"test accuracy [bold]{100 * accuracy:.2f}%[/]  "
                              f"avg bits {result['avg_bits']:.2f}  weighted bits {result['weighted_bits']:.2f}  "
                              f"size {result['size_bytes']:,} B")
