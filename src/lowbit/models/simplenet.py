"""SimpleNet: the small 5-conv CIFAR-10 network used in the DoReFa / SinReQ / ReLeQ line of
low-bit quantization papers: 3x3 conv-BN-ReLU blocks 64-64-pool-128-128-pool-256-pool, then one
fully connected classifier on the flattened 4x4 map (for 32x32 input)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lowbit.models._layers import conv_stack, init_weights
from lowbit.models.registry import register_model

CFG = (64, 64, "M", 128, 128, "M", 256, "M")


class SimpleNet(nn.Sequential):
    """Five 3x3 conv-BN-ReLU layers with three 2x2 max pools, flatten, fc num_classes."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width_mult: float = 1.0,
    ) -> None:
        layers, channels = conv_stack(CFG, in_channels, width_mult)
        side = input_size // 8
        super().__init__(OrderedDict([
            *layers,
            ("flatten", nn.Flatten()),
            ("fc6", nn.Linear(channels * side * side, num_classes)),
        ]))
        init_weights(self)


@register_model(
    "simplenet",
    kind="image",
    default_input_size=32,
    min_input_size=8,  # three 2x2 max pools
    default_in_channels=3,
    description="SimpleNet: 5-conv BN CIFAR-10 net of the DoReFa/SinReQ papers (~0.6M params)",
)
def simplenet(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> SimpleNet:
    return SimpleNet(num_classes, in_channels, input_size, width_mult)
