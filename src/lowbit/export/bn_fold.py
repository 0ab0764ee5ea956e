"""Batch norm folded into the preceding conv/linear layer, keeping its integer weight codes.

A layer with integer weights ``m`` (step ``Δw``, :mod:`lowbit.export.grids`) and bias ``b``,
followed by eval-mode batch norm (``γ, β, μ, σ² , ε``), computes per output channel ``j``::

    y_j = γ_j (Δw · (a * m)_j + b_j - μ_j) / sqrt(σ²_j + ε) + β_j
        = s_j · (a * m)_j + c_j,   s_j = Δw γ_j / sqrt(σ²_j + ε),   c_j = (b_j - μ_j) γ_j / sqrt(σ²_j + ε) + β_j

so the codes ``m`` stay as stored (bit-exact against the packed file) and batch norm moves into a
per-output-channel weight scale ``s_j`` (negative where ``γ_j`` is) and the bias ``c_j``. The
folded numbers are computed in float64; ``s_j`` is stored as float32, the bias as the integer
pipeline needs it (see :mod:`lowbit.export.onnx_integer`).

The integer pipeline adds the bias in accumulator units ``Δa s_j`` (int32), so ``c_j`` is rounded
to half a unit: at low bits a unit is a large fraction of the output step (2-bit weights and
activations: about a third), and rounding it would flip many output codes. So the int8
container holds ``K * m`` with the scale ``s_j / K`` (:func:`code_multiplier`, ``K`` = 42 at
2-bit DoReFa, 8 at 4-bit, 1 at 7-bit): the same products, a ``K`` times finer bias. ``m`` is
``codes / K`` exactly. :func:`fold_float` does the same for a
float weight tensor (layers computed in float).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lowbit.export.grids import EncodedWeight

INT8_RANGE = (-128, 127)
AVX2_PAIR_LIMIT = 32767  # vpmaddubsw saturates a*w + a'*w' at int16 on x86 without VNNI


@dataclass
class FoldedLayer:
    """Integer weights with a per-output-channel scale and a float64 bias."""

    codes: np.ndarray  # int8, the layer's weight shape (out, in/groups, *kernel) or (out, in)
    scale: np.ndarray  # float64 (out,), may be negative
    bias: np.ndarray  # float64 (out,)
    multiplier: int = 1  # codes = multiplier * m (the packed file's integers)


def _bn_affine(bn: nn.Module | None, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(multiplier γ/σ, mean μ, shift β) of an eval-mode batch norm, identity when ``bn`` is None."""
    if bn is None:
        return np.ones(out), np.zeros(out), np.zeros(out)
    var = bn.running_var.detach().double().numpy()
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones(out)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros(out)
    return gamma / np.sqrt(var + bn.eps), bn.running_mean.detach().double().numpy(), beta


def fits_int8(weight: EncodedWeight) -> bool:
    """Whether the weight's integer values ``m`` fit an int8 container (every rule but 8-bit DoReFa/PACT)."""
    low, high = weight.grid.int_range()
    return weight.table is None and INT8_RANGE[0] <= low and high <= INT8_RANGE[1]


def code_multiplier(weight: EncodedWeight, act_max: int) -> int:
    """The integer ``K`` the int8 container holds ``K * m`` with (scale ``Δw / K``): as large as int8 allows,
    and small enough that ``2 * act_max * K * max|m| <= 32767`` (x86 AVX2's u8 x s8 pair sums)."""
    peak = max(abs(v) for v in weight.grid.int_range())
    return max(1, min(INT8_RANGE[1] // peak, AVX2_PAIR_LIMIT // (2 * act_max * peak)))


def fold_integer(weight: EncodedWeight, bias: torch.Tensor | None, bn: nn.Module | None, multiplier: int = 1) -> FoldedLayer:
    """The layer's int8 codes ``K * m``, per-channel scale and bias with ``bn`` (or None) folded in."""
    codes = weight.int_values().numpy()
    out = codes.shape[0]
    mult, mean, shift = _bn_affine(bn, out)
    b = bias.detach().double().numpy() if bias is not None else np.zeros(out)
    return FoldedLayer((codes * multiplier).astype(np.int8), weight.grid.step * mult / multiplier, (b - mean) * mult + shift,
                       multiplier)


def fold_float(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 weight, float32 bias) of a float-computed layer with ``bn`` (or None) folded in."""
    w = weight.detach().double().numpy()
    out = w.shape[0]
    mult, mean, shift = _bn_affine(bn, out)
    b = bias.detach().double().numpy() if bias is not None else np.zeros(out)
    folded = w * mult.reshape(-1, *([1] * (w.ndim - 1)))
    return folded.astype(np.float32), ((b - mean) * mult + shift).astype(np.float32)
