"""WaveQ end to end on any float model and data loaders (METHODS.md section 3).

``waveq_quantize(net, train_loader, ...)``:

1. WaveQ phase (float forward pass): ``fit`` trains the network together with β and α under
   L_task + λ_w(t) Σ R_l + λ_β(t) B(β) (``lowbit.reg.waveq``); β is clamped after every step and
   frozen at its integer plan at progress 0.8, after which the sinusoid snaps the weights.
2. The integer plan (weights; activations at ``act_bits`` with the usual pins) goes through
   ``quantize_`` with the chosen quantizer. α seeds the quantizer's scale where the quantizer
   has one to learn: WRPN/DoReFa ``scale="learned"`` start at α, LSQ's step at α / 2^(k-1).
3. A quantized fine-tune at that plan (optional, ``finetune=None`` skips it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lowbit.nn.convert import quantize_, quantized_layers
from lowbit.nn.finetune import finetune_quantized
from lowbit.plan import PIN_BITS, LayerBits, Plan, PlanEntry
from lowbit.quant.bits import FLOAT_BITS
from lowbit.quant.registry import QuantizerSpec
from lowbit.recipes import QUANTIZED_FINETUNE, WAVEQ_EPOCHS, WAVEQ_FINETUNE_EPOCHS, WAVEQ_PHASE, WAVEQ_SCALE
from lowbit.reg.waveq import WaveQ, WaveQConfig, is_waveq_param
from lowbit.train import MetricsWriter, TrainConfig, evaluate, fit
from lowbit.train.loop import Batches
from lowbit.train.progress import QUIET, Reporter


@dataclass
class WaveQOutcome:
    model: nn.Module  # the quantized network at the integer plan (fine-tuned if asked)
    bits: dict[str, int]  # integer weight bits per quantizable layer
    plan: Plan
    beta: dict[str, float]  # final continuous β of the learned layers (= their integer bits once frozen)
    alpha: dict[str, float]
    waveq_history: list[dict[str, Any]] = field(default_factory=list)
    finetune_history: list[dict[str, Any]] = field(default_factory=list)
    waveq_wall_s: float = 0.0
    finetune_wall_s: float = 0.0
    accuracy_before_finetune: float | None = None  # on eval_loader, right after quantize_


def integer_plan(bits: dict[str, int], act_bits: int = FLOAT_BITS, pin_bits: int = PIN_BITS) -> Plan:
    """The plan of WaveQ's integer weight bits; activations at ``act_bits`` except those the
    first/last pin holds (``lowbit.plan``): the network input (first layer: 32) and the last layer
    (``pin_bits`` when activations are quantized, or more)."""
    names = list(bits)
    pin_act = max(act_bits, pin_bits) if act_bits != FLOAT_BITS else FLOAT_BITS
    plan = Plan(default=LayerBits(pin_bits, act_bits), first_last=LayerBits(pin_bits, pin_act),
                entries=tuple(PlanEntry(n, bits[n], None) for n in names))
    return Plan.from_layer_bits(plan.resolve(names))


@torch.no_grad()
def seed_scales_from_alpha(model: nn.Module, alpha: dict[str, float]) -> None:
    """Start learned output scales at α (LSQ: step α / 2^(k-1)) so the quantizer's grid is the
    one WaveQ pulled the weights onto; quantizers without a learned scale are left alone."""
    for name, layer in quantized_layers(model).items():
        if layer.weight_quantizer is not None and name in alpha:
            layer.weight_quantizer.seed_scale(alpha[name])


_RECIPE_FINETUNE = QUANTIZED_FINETUNE.train_config(WAVEQ_FINETUNE_EPOCHS)


def waveq_quantize(net: nn.Module, train_loader: Batches, *, waveq: WaveQConfig | None = None,
                   train: TrainConfig | None = None, pretrained: bool = True,
                   quantizer: QuantizerSpec | None = None, finetune: TrainConfig | None = _RECIPE_FINETUNE,
                   act_bits: int = FLOAT_BITS, eval_loader: Batches | None = None, eval_name: str = "test",
                   metrics: MetricsWriter | None = None, reporter: Reporter = QUIET) -> WaveQOutcome:
    """Learn a per-layer plan with WaveQ on ``net`` (changed in place), quantize it, fine-tune it.

    Defaults are ``lowbit waveq``'s (:mod:`lowbit.recipes`): ``train`` None is the WaveQ phase's
    recipe for a trained (``pretrained=True``) or fresh network, ``quantizer`` None is
    ``waveq.quantizer`` with a learned scale seeded at α, and the fine-tune runs the quantized
    fine-tune recipe (``finetune=None`` skips it).
    """
    waveq = waveq or WaveQConfig()
    train = train or WAVEQ_PHASE[bool(pretrained)].train_config(WAVEQ_EPOCHS)
    quantizer = quantizer or QuantizerSpec(waveq.quantizer, scale=WAVEQ_SCALE)
    if finetune is _RECIPE_FINETUNE:
        finetune = replace(finetune, device=train.device)
    method = WaveQ(net, waveq)
    model = method.wrap()

    def waveq_fields(epoch: int, m: nn.Module) -> dict[str, Any]:
        return {"phase": "waveq", **method.epoch_fields(epoch, m)}

    start = time.perf_counter()
    reporter.log(f"WaveQ phase: {train.epochs} epochs, learning bits of {', '.join(method.names)}")
    history = fit(model, train_loader, train, eval_loader=eval_loader, eval_name=eval_name,
                  loss_terms=method.loss_terms(), callbacks=[waveq_fields], step_callbacks=[method.step_callback],
                  no_decay=is_waveq_param, metrics=metrics, reporter=reporter).history
    if not bool(method.params.frozen):
        method.freeze()  # a run with no steps (epochs=0) still ends with an integer plan
    waveq_wall = time.perf_counter() - start
    bits = method.plan_bits()
    alpha = method.alpha()
    reporter.log("learned plan: " + ", ".join(f"{n} {b}" for n, b in bits.items()))

    plan = integer_plan(bits, act_bits, waveq.pin_bits)
    quantize_(net, plan, quantizer)
    seed_scales_from_alpha(net, alpha)
    before = evaluate(net, eval_loader, finetune.device if finetune else train.device)[1] if eval_loader else None
    finetune_history: list[dict[str, Any]] = []
    start = time.perf_counter()
    if finetune is not None and finetune.epochs > 0:
        reporter.log(f"quantized fine-tune at the learned plan: {finetune.epochs} epochs ({quantizer.name})")
        finetune_history = finetune_quantized(net, train_loader, finetune, eval_loader=eval_loader,
                                              eval_name=eval_name, metrics=metrics, reporter=reporter)
    return WaveQOutcome(net, bits, plan, method.beta(), alpha, history, finetune_history, waveq_wall,
                        time.perf_counter() - start, before)
