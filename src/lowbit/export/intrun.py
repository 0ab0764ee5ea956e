"""Integer reference runtime: conv and linear layers computed on integer codes.

For a layer with k-bit weights (integer values ``m``, step ``Δw``, see
:mod:`lowbit.export.grids`) and quantized input activations (codes ``a``, step ``Δa``)::

    acc = conv(a, m)                       exact integer sum of integer products
    y   = fl32(acc * (Δa * Δw) + bias)     one per-layer rescale (float64), rounded once to float32

A layer whose input is not quantized (the network input; act bits 32) computes
``conv(x, m) * Δw + bias`` on the float activations (integer weights, float64 arithmetic); a
layer with float weights but quantized input uses ``conv(a, w) * Δa``. Everything between the
layers (batch norm, ReLU, pooling, residual adds) runs in float32 as in the float model.

Integer arithmetic on CPU: PyTorch has no integer convolution, so the integer sums are computed
by float64 convolution/matmul of integer-valued tensors. Every product and partial sum is an
integer below 2**53 in magnitude (checked when the layer is built: fan_in * max|a| * max|m|),
so float64 represents each one exactly and the result is the exact integer sum, whatever the
summation order; :attr:`IntegerLayer.accumulator_bits` says whether an int32 accumulator would
hold it (32) or int64 is needed (64).

Tolerances against the fake-quant model (documented here, tested in tests/test_export_intrun.py):

- per layer, given the same input: the activation codes are identical (same float32 operations
  as the quantizer) and the outputs differ only by the fake-quant model's float32 summation
  rounding: ``max|y_int - y_fq| <= 1e-5 * max|y_fq|`` (:data:`LAYER_RTOL`; measured <= 2e-6);
- end to end, :func:`output_tolerance`: ``1e-4 * max(1, max|y_fq|)`` (float rounding), plus,
  when activations are quantized, *one quantization step at the last layer*: the most its
  outputs can move if each of its input activations moves by one level,
  ``Δa_last * max_j sum_i |W_last[j, i]|``. Level flips are why: a pre-activation that the two
  paths compute one float32 rounding apart can fall on either side of a level boundary.
  In small nets (LeNet-5, tested) the flips stay isolated and the bound holds. In deep nets
  with batch norm they cascade: in the benchmark's random-init ResNet-20 (mixed plan) a single
  flipped code at the first quantized activation grows to thousands of differing codes (up to
  the full 3-bit range) by the last stage, and 6% to 28% of the samples exceed the bound (up to
  ~8% of the output range). The integer runtime and ONNX Runtime, whose sums are both closer to
  exact, often agree with each other there far better than either agrees with PyTorch's
  fake-quant model. So for deep nets only gross agreement is tested, and the differences are
  measured by ``benchmarks/export_bench.py``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lowbit.export.errors import ExportError
from lowbit.export.grids import ActGrid, EncodedWeight
from lowbit.export.packed import PackedModel

EXACT_LIMIT = 2**53
INT32_LIMIT = 2**31


LAYER_RTOL = 1e-5


def output_tolerance(packed: PackedModel, reference: torch.Tensor) -> float:
    """End-to-end tolerance of the integer runtime (and ONNX) against the fake-quant ``reference``
    outputs of ``packed``'s model; see the module docstring."""
    peak = float(reference.detach().abs().max()) if reference.numel() else 0.0
    tol = 1e-4 * max(1.0, peak)
    if not packed.acts:
        return tol
    last = list(packed.layers)[-1]
    grid = packed.acts.get(last) or max(packed.acts.values(), key=lambda g: g.step)  # last quantized input
    key = f"{last}.weight"
    weight = packed.weights[key].dequantize() if key in packed.weights else packed.floats[key]
    return tol + grid.step * float(weight.reshape(weight.shape[0], -1).abs().sum(1).max())


class IntegerLayer(nn.Module):
    """One conv/linear layer on integer weight (and activation) codes; see the module docstring."""

    def __init__(self, name: str, layer: nn.Module, weight: EncodedWeight | None, act: ActGrid | None) -> None:
        super().__init__()
        self.name = name
        self.act = act
        core = copy.deepcopy(layer).double()
        if weight is not None:
            values = weight.int_values()
            self.weight_step = weight.grid.step
            w_max = max(abs(v) for v in weight.grid.int_range())
        else:
            values = layer.weight.detach()
            self.weight_step = 1.0
            w_max = None
        core.weight = nn.Parameter(values.double(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().double(), requires_grad=False)
        core.bias = None
        self.core = core
        fan_in = values[0].numel()
        self.accumulator_bits = None  # integer x integer layers only
        if w_max is not None and act is not None:
            bound = fan_in * act.n * w_max
            if bound >= EXACT_LIMIT:
                raise ExportError(f"layer {name!r}: integer sums up to {bound} exceed 2**53; not exact in float64")
            self.accumulator_bits = 32 if bound < INT32_LIMIT else 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            inputs, scale = self.act.codes(x).double(), self.act.step * self.weight_step
        else:
            inputs, scale = x.double(), self.weight_step
        acc = self.core(inputs)  # exact integer sums when both operands are integers
        y = acc * scale
        if self.bias is not None:
            y = y + (self.bias if isinstance(self.core, nn.Linear) else self.bias.view(-1, *([1] * (y.dim() - 2))))
        return y.float()

    def extra_repr(self) -> str:
        act = f"a{self.act.bits}" if self.act is not None else "float input"
        return f"{self.name!r}, {act}, accumulator={self.accumulator_bits or 'float64'}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def integer_model(packed: PackedModel) -> nn.Module:
    """The stored model with every quantized conv/linear layer replaced by an :class:`IntegerLayer` (eval mode)."""
    model = packed.float_module(activations=False)
    names = [n for n in packed.layers if f"{n}.weight" in packed.weights or n in packed.acts]
    for name in names:
        layer = model.get_submodule(name)
        if layer.weight.dim() not in (2, 3, 4):
            raise ExportError(f"layer {name!r}: unsupported layer type {type(layer).__name__}")
        _set_module(model, name, IntegerLayer(name, layer, packed.weights.get(f"{name}.weight"), packed.acts.get(name)))
    return model.eval()


def integer_layers(model: nn.Module) -> dict[str, IntegerLayer]:
    return {m.name: m for m in model.modules() if isinstance(m, IntegerLayer)}


def accumulator_summary(model: nn.Module) -> dict[str, int | None]:
    """Per integer layer: 32 or 64 (accumulator width the exact sums need), None for float-input layers."""
    return {name: layer.accumulator_bits for name, layer in integer_layers(model).items()}
