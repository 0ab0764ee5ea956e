"""AlexNet (Krizhevsky, Sutskever & Hinton, "ImageNet classification with deep convolutional
neural networks", NIPS 2012), the usual 32x32 CIFAR variant with batch norm: five conv layers
64-192-384-256-256 (5x5, 5x5, then 3x3) with three 2x2 max pools, then fc6/fc7 (1024 wide,
instead of 4096) and the fc8 classifier."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lowbit.models._layers import conv_bn_relu, init_weights, linear_bn_relu, scaled
from lowbit.models.registry import register_model


class AlexNet(nn.Sequential):
    """conv1-5 with BN, max pools after conv1, conv2 and conv5, flatten, fc6-fc7-fc8."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width_mult: float = 1.0,
    ) -> None:
        c1, c2, c3, c4, hidden = (scaled(n, width_mult) for n in (64, 192, 384, 256, 1024))
        side = input_size // 8
        super().__init__(OrderedDict([
            *conv_bn_relu("1", in_channels, c1, 5),
            ("pool1", nn.MaxPool2d(2)),
            *conv_bn_relu("2", c1, c2, 5),
            ("pool2", nn.MaxPool2d(2)),
            *conv_bn_relu("3", c2, c3, 3),
            *conv_bn_relu("4", c3, c4, 3),
            *conv_bn_relu("5", c4, c4, 3),
            ("pool3", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            *linear_bn_relu("6", c4 * side * side, hidden),
            *linear_bn_relu("7", hidden, hidden),
            ("fc8", nn.Linear(hidden, num_classes)),
        ]))
        init_weights(self)


@register_model(
    "alexnet",
    kind="image",
    default_input_size=32,
    min_input_size=8,  # three 2x2 max pools
    default_in_channels=3,
    description="AlexNet (Krizhevsky et al. 2012), 32x32 variant with BN and 1024-wide fc layers",
)
def alexnet(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> AlexNet:
    return AlexNet(num_classes, in_channels, input_size, width_mult)
