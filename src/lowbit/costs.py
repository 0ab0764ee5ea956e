"""Costs of a quantized model's plan (METHODS.md section 6), shared by results, search and reports.

- ``avg_bits``: mean weight bits over the quantized layers (the papers' metric); 32.0 when no
  layer is quantized.
- ``weighted_bits``: weight bits averaged over all Conv/Linear weights, weighted by parameter
  count (float layers count as 32).
- ``size_bytes``: bytes to store the model with each quantized weight tensor packed densely at
  its bits (``ceil(n * bits / 8)``) plus one float32 scale per quantized tensor (this covers a
  weight quantizer's learned scale or step), and every other parameter and floating-point buffer
  (biases, float layers, batch norm affine and statistics, activation clip values) as float32.
  This is the floor the packed export format approaches (plus its header).

Compute costs (``compute_costs``; ``w``/``a`` = a layer's weight/activation bits, 32 = float;
``MACs_l`` = its multiply-accumulates per sample from ``layer_macs``):

- ``layer_macs``: measured with forward hooks on one sample input (eval mode). Linear:
  ``out_numel_per_sample * in_features``; Conv1d/Conv2d (grouped and depthwise included):
  ``out_numel_per_sample * (in_channels / groups) * prod(kernel_size)``. A layer run twice
  counts twice; one never run counts 0.
- ``macs`` = ``Σ MACs_l``; ``bops`` = ``Σ MACs_l * w * a`` (float counts as 32).
- Speedups are over the same layers all at ``w = a = 8``; 1.0 when there are no MACs.
- ``bit_serial_speedup`` (Stripes/Loom-style, one bit per cycle), ``serial="weights"``
  (default; ReLeQ searches weight bits): ``time_l ∝ MACs_l * w`` with a float weight at 32, so
  ``Σ MACs_l * 8 / Σ MACs_l * w``. ``serial="both"`` (weights and activations serial):
  ``time_l ∝ MACs_l * w * a' / 8`` where a float activation counts as ``a' = 8`` (the width the
  weights-only mode implicitly assumes, so both modes agree when activations stay float) and a
  float weight still as 32: ``Σ MACs_l * 64 / Σ MACs_l * w * a'``.
- ``bit_fusion_speedup`` (BitFusion, Sharma et al. 2018): fused 2-bit BitBricks; a ``w x a``
  multiply rounds each operand up to 2, 4 or 8 bits (``pw``, ``pa``; 1 bit -> 2) and uses
  ``(pw/2) * (pa/2)`` bricks, so ``time_l ∝ MACs_l * (pw/2) * (pa/2)`` and the speedup is
  ``Σ MACs_l * 16 / Σ MACs_l * (pw/2) * (pa/2)``. Float cannot run on it: a float activation or
  weight is counted at 8 bits (the baseline), so a float layer neither gains nor loses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.nn.convert import layer_bits, quantizable_layers
from lowbit.plan import LayerBits
from lowbit.quant.bits import FLOAT_BITS

FLOAT_BYTES = 4
SERIAL_MODES = ("weights", "both")


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


@torch.no_grad()
def layer_macs(model: nn.Module, sample_input: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per sample of every quantizable layer, measured with forward hooks on
    ``sample_input`` (any batch size) in eval mode; modes and hooks are restored afterwards."""
    if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 2 or sample_input.shape[0] < 1:
        got = tuple(sample_input.shape) if isinstance(sample_input, torch.Tensor) else type(sample_input).__name__
        raise ConfigError(f"counting MACs needs a sample input tensor with a batch dimension "
                          f"(batch >= 1), got {got}")
    layers = quantizable_layers(model)
    macs = dict.fromkeys(layers, 0)

    def hook(name: str):
        def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
            per_sample = output.numel() // max(output.shape[0], 1)
            if isinstance(module, nn.Linear):
                macs[name] += per_sample * module.in_features
            else:
                macs[name] += per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return count

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        model.eval()
        model(sample_input)
    except RuntimeError as e:
        raise ConfigError(f"the model cannot run on a sample input of shape {tuple(sample_input.shape)} "
                          f"to count MACs: {e}") from e
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    return macs


@dataclass(frozen=True)
class ComputeCosts:
    macs: int
    bops: int
    bit_serial_speedup: float
    bit_fusion_speedup: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _fusion_bits(bits: int) -> int:
    return 2 if bits <= 2 else 4 if bits <= 4 else 8  # float (32) runs at 8, the baseline


def compute_costs(macs: Mapping[str, int], bits: Mapping[str, LayerBits], serial: str = "weights") -> ComputeCosts:
    """BOPs and speedups over all-8-bit from per-layer MACs and bits (no model: searches call this)."""
    if serial not in SERIAL_MODES:
        raise ConfigError(f"unknown bit-serial mode {serial!r}; choose one of {', '.join(SERIAL_MODES)}")
    total = bops = serial_time = fusion_time = 0  # times scaled by 8 and 4: exact integers
    for name, n in macs.items():
        w, a = bits[name].weight, bits[name].act
        total += n
        bops += n * w * a
        serial_time += n * w * (8 if a == FLOAT_BITS else a) if serial == "both" else n * w * 8
        fusion_time += n * _fusion_bits(w) * _fusion_bits(a)
    if not total:
        return ComputeCosts(0, 0, 1.0, 1.0)
    return ComputeCosts(total, bops, total * 64 / serial_time, total * 64 / fusion_time)


def model_compute_costs(model: nn.Module, sample_input: torch.Tensor, serial: str = "weights") -> ComputeCosts:
    """Compute costs of a model as it is now quantized, MACs measured on ``sample_input``."""
    return compute_costs(layer_macs(model, sample_input), layer_bits(model), serial)
