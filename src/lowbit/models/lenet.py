"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998) in its common modern form: ReLU and max pooling instead of tanh
and subsampling, no batch norm, for 28x28 MNIST-style images."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lowbit.models._layers import conv_out, init_weights, scaled
from lowbit.models.registry import register_model


class LeNet5(nn.Sequential):
    """conv 6@5x5 (pad 2) - pool - conv 16@5x5 - pool - fc120 - fc84 - fc num_classes."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        width_mult: float = 1.0,
    ) -> None:
        c1, c2, f1, f2 = (scaled(n, width_mult) for n in (6, 16, 120, 84))
        side = conv_out(conv_out(input_size // 2, 5), 2, 2)  # after conv2 and pool2
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, c1, 5, padding=2)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(c1, c2, 5)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc3", nn.Linear(c2 * side * side, f1)),
            ("relu3", nn.ReLU()),
            ("fc4", nn.Linear(f1, f2)),
            ("relu4", nn.ReLU()),
            ("fc5", nn.Linear(f2, num_classes)),
        ]))
        init_weights(self)


@register_model(
    "lenet5",
    kind="image",
    default_input_size=28,
    min_input_size=12,  # 12 -> pool 6 -> conv 2 -> pool 1
    default_in_channels=1,
    description="LeNet-5 (LeCun et al. 1998), ReLU + max pool, no BN; MNIST-sized",
)
def lenet5(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> LeNet5:
    return LeNet5(num_classes, in_channels, input_size, width_mult)
