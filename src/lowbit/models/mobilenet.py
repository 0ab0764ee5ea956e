"""MobileNet v1 (Howard et al., "MobileNets: Efficient convolutional neural networks for mobile
vision applications", 2017), the usual 32x32 CIFAR variant: a stride-1 3x3 stem, then 13
depthwise-separable blocks (3x3 depthwise conv with groups=channels, then 1x1 pointwise conv,
each followed by BN and ReLU), global average pooling and the classifier."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from lowbit.models._layers import Named, conv_bn_relu, init_weights, scaled
from lowbit.models.registry import register_model

# (out_channels, stride) of the 13 blocks; the ImageNet net's first stride-2 is dropped for 32x32.
BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


class DepthwiseSeparable(nn.Sequential):
    """conv_dw (3x3, groups=in_ch) - bn_dw - relu_dw - conv_pw (1x1) - bn_pw - relu_pw."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__(OrderedDict([
            ("conv_dw", nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)),
            ("bn_dw", nn.BatchNorm2d(in_ch)),
            ("relu_dw", nn.ReLU()),
            ("conv_pw", nn.Conv2d(in_ch, out_ch, 1, bias=False)),
            ("bn_pw", nn.BatchNorm2d(out_ch)),
            ("relu_pw", nn.ReLU()),
        ]))


class MobileNet(nn.Sequential):
    """Stem conv-BN-ReLU (32), ``block1``..``block13``, global avg pool, flatten, fc."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        channels = scaled(32, width_mult)
        layers: Named = conv_bn_relu("1", in_channels, channels, 3)
        for i, (out, stride) in enumerate(BLOCKS, start=1):
            out_ch = scaled(out, width_mult)
            layers.append((f"block{i}", DepthwiseSeparable(channels, out_ch, stride)))
            channels = out_ch
        layers += [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(channels, num_classes)),
        ]
        super().__init__(OrderedDict(layers))
        init_weights(self)


@register_model(
    "mobilenet",
    kind="image",
    default_input_size=32,
    min_input_size=1,  # stride-2 3x3 convs with padding 1 keep a 1x1 map at 1x1
    default_in_channels=3,
    description="MobileNet v1 (Howard et al. 2017), 32x32 variant, depthwise-separable blocks",
)
def mobilenet(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> MobileNet:
    return MobileNet(num_classes, in_channels, width_mult)
