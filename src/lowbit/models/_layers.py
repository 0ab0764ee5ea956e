"""Small building blocks shared by the model files (plain modules, no custom forward)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
Named = list[tuple[str, nn.Module]]


def scaled(features: int, width_mult: float) -> int:
    """A hidden channel/feature count scaled by ``width_mult``: rounded, at least 1."""
    return max(1, int(round(features * width_mult)))


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_bn_relu(
    tag: str,
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    dims: int = 2,
) -> Named:
    """``conv{tag}`` (no bias) -> ``bn{tag}`` -> ``relu{tag}``; 'same' padding by default."""
    conv_cls, bn_cls = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
    pad = kernel // 2 if padding is None else padding
    return [
        (f"conv{tag}", conv_cls(in_ch, out_ch, kernel, stride=stride, padding=pad, bias=False)),
        (f"bn{tag}", bn_cls(out_ch)),
        (f"relu{tag}", nn.ReLU()),
    ]


def linear_bn_relu(tag: str, in_features: int, out_features: int) -> Named:
    """``fc{tag}`` (no bias) -> ``bn{tag}`` (BatchNorm1d) -> ``relu{tag}``."""
    return [
        (f"fc{tag}", nn.Linear(in_features, out_features, bias=False)),
        (f"bn{tag}", nn.BatchNorm1d(out_features)),
        (f"relu{tag}", nn.ReLU()),
    ]


def conv_stack(cfg: Sequence[int | str], in_ch: int, width_mult: float) -> tuple[Named, int]:
    """VGG-style 3x3 conv-BN-ReLU blocks; ``"M"`` is a 2x2 max pool. Returns (layers, out_ch)."""
    layers: Named = []
    n_conv = n_pool = 0
    for v in cfg:
        if v == "M":
            n_pool += 1
            layers.append((f"pool{n_pool}", nn.MaxPool2d(2)))
        else:
            n_conv += 1
            out_ch = scaled(int(v), width_mult)
            layers += conv_bn_relu(str(n_conv), in_ch, out_ch, 3)
            in_ch = out_ch
    return layers, in_ch


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU gain) convs/linears with zero biases, BN as identity; the
    last conv/linear (the classifier) gets unit gain so the logits start at about unit scale."""
    weighted = [m for m in model.modules() if isinstance(m, WEIGHTED)]
    for m in model.modules():
        if isinstance(m, WEIGHTED):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if weighted:
        nn.init.kaiming_normal_(weighted[-1].weight, mode="fan_in", nonlinearity="linear")
