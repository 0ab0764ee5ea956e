"""Costs of a quantized model's plan (METHODS.md section 6), shared by results, search and reports.

- ``avg_bits``: mean weight bits over the quantized layers (the papers' metric); 32.0 when no
  layer is quantized.
- ``weighted_bits``: weight bits averaged over all Conv/Linear weights, weighted by parameter
  count (float layers count as 32).
- ``size_bytes``: bytes to store the model with each quantized weight tensor packed densely at
  its bits (``ceil(n * bits / 8)``) plus one float32 scale per quantized tensor (this covers a
  weight quantizer's learned scale or step), and every other parameter and floating-point buffer
  (biases, float layers, batch norm affine and statistics, activation clip values) as float32. This is the floor the packed export format approaches (plus its header).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from torch import nn

from lowbit.nn.convert import layer_bits, quantizable_layers
from lowbit.plan import LayerBits
from lowbit.quant.bits import FLOAT_BITS

FLOAT_BYTES = 4


@dataclass(frozen=True)
class PlanCosts:
    avg_bits: float
    weighted_bits: float
    size_bytes: int
    float_size_bytes: int

    @property
    def compression(self) -> float:
        return self.float_size_bytes / self.size_bytes if self.size_bytes else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "compression": self.compression}


def weight_counts(model: nn.Module) -> dict[str, int]:
    """Number of weight elements of every quantizable layer."""
    return {name: m.weight.numel() for name, m in quantizable_layers(model).items()}


def costs_of(counts: Mapping[str, int], bits: Mapping[str, LayerBits], other_params: int = 0) -> PlanCosts:
    """Costs from per-layer weight counts and bits (no model needed: searches call this)."""
    quantized = [bits[n].weight for n in counts if bits[n].weight != FLOAT_BITS]
    avg = sum(quantized) / len(quantized) if quantized else float(FLOAT_BITS)
    total = sum(counts.values())
    weighted = sum(counts[n] * bits[n].weight for n in counts) / total if total else float(FLOAT_BITS)
    packed = sum(math.ceil(counts[n] * bits[n].weight / 8) + (FLOAT_BYTES if bits[n].weight != FLOAT_BITS else 0)
                 for n in counts)
    return PlanCosts(avg, weighted, packed + FLOAT_BYTES * other_params, FLOAT_BYTES * (total + other_params))


def model_costs(model: nn.Module) -> PlanCosts:
    """Costs of a model as it is now quantized."""
    counts = weight_counts(model)
    layers = quantizable_layers(model).values()
    weight_ids = {id(m.weight) for m in layers}
    weight_ids |= {id(p) for m in layers if getattr(m, "weight_quantizer", None) is not None
                   for p in m.weight_quantizer.parameters()}  # stored as the one scale per tensor
    others = sum(p.numel() for p in model.parameters() if id(p) not in weight_ids)
    others += sum(b.numel() for name, b in model.named_buffers() if b.is_floating_point())
    return costs_of(counts, layer_bits(model), others)
