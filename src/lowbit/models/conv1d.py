"""A small 1-D CNN for MNIST-1D (Greydanus, "Scaling down deep learning", 2020): sequences of
length 40 with 1 channel. Like the paper's ConvBase (three convs, the last two with stride 2,
then a linear classifier on the flattened features), but wider (32-64-64) and with BN."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lowbit.models._layers import conv_bn_relu, conv_out, init_weights, scaled
from lowbit.models.registry import register_model


class Conv1dNet(nn.Sequential):
    """conv 32@k5 - conv 64@k3/2 - conv 64@k3/2 (each BN-ReLU), flatten, fc num_classes."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 40,
        width_mult: float = 1.0,
    ) -> None:
        c1, c2, c3 = (scaled(n, width_mult) for n in (32, 64, 64))
        length = conv_out(conv_out(input_size, 3, 2, 1), 3, 2, 1)  # after conv2 and conv3
        super().__init__(OrderedDict([
            *conv_bn_relu("1", in_channels, c1, 5, dims=1),
            *conv_bn_relu("2", c1, c2, 3, stride=2, dims=1),
            *conv_bn_relu("3", c2, c3, 3, stride=2, dims=1),
            ("flatten", nn.Flatten()),
            ("fc4", nn.Linear(c3 * length, num_classes)),
        ]))
        init_weights(self)


@register_model(
    "conv1d",
    kind="sequence",
    default_input_size=40,
    min_input_size=1,  # 'same' padding and stride-2 convs with padding 1 keep length >= 1
    default_in_channels=1,
    description="Small 1-D CNN (32-64-64 channels, BN) for MNIST-1D sequences of length 40",
)
def conv1d(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> Conv1dNet:
    return Conv1dNet(num_classes, in_channels, input_size, width_mult)
