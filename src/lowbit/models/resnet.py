"""CIFAR ResNets (He, Zhang, Ren & Sun, "Deep residual learning for image recognition", CVPR
2016). ``resnet20``: the paper's CIFAR-10 net, 3 stages of 3 basic blocks with 16-32-64
channels. ``resnet18``: the common 32x32 variant of ResNet-18 (3x3 stem, no max pool, 4 stages of
2 basic blocks, 64-128-256-512). Both use option-B shortcuts (1x1 conv + BN) where the shape
changes. Each residual block is one top-level child, so the model stays an ``nn.Sequential``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from lowbit.models._layers import Named, conv_bn_relu, init_weights, scaled
from lowbit.models.registry import register_model


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); modules registered in call order."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class ResNet(nn.Sequential):
    """Stem conv-BN-ReLU, blocks named ``layer{stage}_{index}``, global avg pool, fc."""

    def __init__(
        self,
        stage_channels: Sequence[int],
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        channels = scaled(stage_channels[0], width_mult)
        layers: Named = conv_bn_relu("1", in_channels, channels, 3)
        for stage, base in enumerate(stage_channels, start=1):
            out_ch = scaled(base, width_mult)
            for index in range(blocks_per_stage):
                stride = 2 if stage > 1 and index == 0 else 1
                layers.append((f"layer{stage}_{index}", BasicBlock(channels, out_ch, stride)))
                channels = out_ch
        layers += [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(channels, num_classes)),
        ]
        super().__init__(OrderedDict(layers))
        init_weights(self)


# Stride-2 3x3 convs with padding 1 map a 1x1 input to 1x1, so any size >= 1 works.
@register_model(
    "resnet20",
    kind="image",
    default_input_size=32,
    min_input_size=1,
    default_in_channels=3,
    description="ResNet-20 for CIFAR (He et al. 2016), 16-32-64 channels, option-B shortcuts",
)
def resnet20(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> ResNet:
    return ResNet((16, 32, 64), 3, num_classes, in_channels, width_mult)


@register_model(
    "resnet18",
    kind="image",
    default_input_size=32,
    min_input_size=1,
    default_in_channels=3,
    description="ResNet-18, CIFAR 32x32 variant (3x3 stem, no max pool), 64-128-256-512",
)
def resnet18(num_classes: int, in_channels: int, input_size: int, width_mult: float) -> ResNet:
    return ResNet((64, 128, 256, 512), 2, num_classes, in_channels, width_mult)
