"""Quantized drop-in layers: QuantConv1d, QuantConv2d, QuantLinear.

Each subclasses its float layer (``isinstance(m, nn.Conv2d)`` still holds) and keeps the float
shadow weight as ``weight``; the forward pass uses ``weight_quantizer(weight)`` and quantizes
the incoming activation with ``input_quantizer`` when one is set (act bits < 32). Grouped and
depthwise convolutions work unchanged: quantization is elementwise on the weight tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.base import ActQuantizer, WeightQuantizer
from lowbit.quant.bits import FLOAT_BITS

FLOAT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


class QuantLayer:
    """Mixin holding the quantizers and the bits of one layer.

    ``fake_quant`` (default True) switches the forward pass between fake-quantized and float while
    keeping the quantizers attached, so a regularizer can use their geometry on a float model.
    """

    weight: nn.Parameter
    weight_quantizer: WeightQuantizer | None
    input_quantizer: ActQuantizer | None
    layer_name: str

    fake_quant: bool = True  # False: the forward pass runs float (SinReQ's pre-quantization phase)

    def _attach(self, name: str, wq: WeightQuantizer | None, aq: ActQuantizer | None) -> None:
        self.layer_name = name
        self.weight_quantizer = wq
        self.input_quantizer = aq

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.bits if self.weight_quantizer is not None else FLOAT_BITS

    @property
    def act_bits(self) -> int:
        return self.input_quantizer.bits if self.input_quantizer is not None else FLOAT_BITS

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (fake-quantized, or the float weight at 32 bits)."""
        return self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight

    def _forward_weight(self) -> torch.Tensor:
        return self.effective_weight() if self.fake_quant else self.weight

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quantizer(x) if self.input_quantizer is not None and self.fake_quant else x


class QuantConv1d(QuantLayer, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quantize_input(x), self._forward_weight(), self.bias)


class QuantConv2d(QuantLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quantize_input(x), self._forward_weight(), self.bias)


class QuantLinear(QuantLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quantize_input(x), self._forward_weight(), self.bias)


QUANT_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear,
}
FLOAT_CLASS: dict[type[nn.Module], type[nn.Module]] = {q: f for f, q in QUANT_CLASS.items()}


def float_type(module: nn.Module) -> type[nn.Module] | None:
    """The float layer type a module is (or wraps), or None if it is not quantizable."""
    if type(module) in FLOAT_CLASS:
        return FLOAT_CLASS[type(module)]
    return type(module) if type(module) in QUANT_CLASS else None


def empty_like_layer(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A new layer of ``cls`` with ``module``'s hyper-parameters, sharing its parameters."""
    if isinstance(module, nn.Linear):
        new = cls(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    else:
        new = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=module.bias is not None, padding_mode=module.padding_mode, device="meta")
    new.weight = module.weight
    new.bias = module.bias
    new.train(module.training)
    return new
