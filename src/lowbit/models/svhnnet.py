"""SVHNNet: the small SVHN network of DoReFa-Net (Zhou et al., "DoReFa-Net: Training low
bitwidth convolutional neural networks with low bitwidth gradients", 2016): a 5x5 conv, 3x3
conv-BN-ReLU blocks 64-64-pool-128-128-128 (the last one unpadded), a 512-wide hidden layer,
then the classifier. Adapted to 32x32 inputs: global average pooling replaces DoReFa's 5x5
"valid" conv so the network stays small (~0.5M params)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lowbit.models._layers import conv_bn_relu, init_weights, linear_bn_relu, scaled
from lowbit.models.registry import register_model


class SVHNNet(nn.Sequential):
    """conv48@5x5-pool-64-64-pool-128-128-128(valid)-avgpool-fc512-fc num_classes, all with BN."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width_mult: float = 1.0,
    ) -> None:
        c1, c2, c3, hidden = (scaled(n, width_mult) for n in (48, 64, 128, 512))
        super().__init__(OrderedDict([
            *conv_bn_relu("1", in_channels, c1, 5),
            ("pool1", nn.MaxPool2d(2)),
            *conv_bn_relu("2", c1, c2, 3),
            *conv_bn_relu("3", c2, c2, 3),
            ("pool2", nn.MaxPool2d(2)),
            *conv_bn_relu("4", c2, c3, 3),
            *conv_bn_relu("5", c3, c3, 3),
            *conv_bn_relu("6", c3, c3, 3, padding=0),
            ("pool3", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            *linear_bn_relu("7", c3, hidden),
            ("fc8", nn.Linear(hidden, num_classes)),
        ]))
        init_weights(self)


@register_model(
    "svhnnet",
    kind="image",
    default_input_size=32,
    min_input_size=12,  # 12 -> pool 6 -> pool 3 -> valid 3x3 conv 1
    default_in_channels=3,
    description="SVHNNet: DoReFa-Net's small SVHN conv net with BN, 32x32 variant",
)
def svhnnet(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> SVHNNet:
    return SVHNNet(num_classes, in_channels, input_size, width_mult)
