"""VGG-11 with batch norm (Simonyan & Zisserman, "Very deep convolutional networks for
large-scale image recognition", ICLR 2015; configuration "A"), in the usual 32x32 CIFAR form:
eight 3x3 conv-BN-ReLU layers with five 2x2 max pools, then a 512-wide classifier."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lowbit.models._layers import conv_stack, init_weights, linear_bn_relu, scaled
from lowbit.models.registry import register_model

CFG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Sequential):
    """Conv stack from ``cfg``, flatten, fc-BN-ReLU x2 (512 wide), fc num_classes."""

    def __init__(
        self,
        cfg: tuple[int | str, ...] = CFG_A,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width_mult: float = 1.0,
    ) -> None:
        layers, channels = conv_stack(cfg, in_channels, width_mult)
        side = input_size // 2 ** cfg.count("M")
        n = sum(1 for v in cfg if v != "M")
        hidden = scaled(512, width_mult)
        super().__init__(OrderedDict([
            *layers,
            ("flatten", nn.Flatten()),
            *linear_bn_relu(str(n + 1), channels * side * side, hidden),
            *linear_bn_relu(str(n + 2), hidden, hidden),
            (f"fc{n + 3}", nn.Linear(hidden, num_classes)),
        ]))
        init_weights(self)


@register_model(
    "vgg11",
    kind="image",
    default_input_size=32,
    min_input_size=32,  # five 2x2 max pools
    default_in_channels=3,
    description="VGG-11 with BN (Simonyan & Zisserman 2015), 32x32 variant, 512-wide classifier",
)
def vgg11(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> VGG:
    return VGG(CFG_A, num_classes, in_channels, input_size, width_mult)
