"""The quantizer families by name, and ``QuantizerSpec``: which family and how to build it.

A spec is a small validated dataclass (torchao style): ``QuantizerSpec("dorefa", scale="max")``.
``quantize_`` asks it for one weight quantizer and one activation quantizer per layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch

from lowbit.errors import ConfigError, unknown_name
from lowbit.quant.base import SCALE_MODES, ActQuantizer, WeightQuantizer
from lowbit.quant.dorefa import DoReFaAct, DoReFaWeight
from lowbit.quant.lsq import LSQAct, LSQWeight
from lowbit.quant.pact import PACTAct, PACTWeight
from lowbit.quant.ternary import TernaryAct, TernaryWeight
from lowbit.quant.wrpn import WRPNAct, WRPNWeight


class Family(NamedTuple):
    weight: type[WeightQuantizer]
    act: type[ActQuantizer]
    description: str


FAMILIES: dict[str, Family] = {
    "dorefa": Family(DoReFaWeight, DoReFaAct, "DoReFa-Net: tanh-normalized weights, clipped [0,1] activations"),
    "wrpn": Family(WRPNWeight, WRPNAct, "WRPN: sign + magnitude bits, zero is a level; widen with width_mult"),
    "pact": Family(PACTWeight, PACTAct, "PACT: DoReFa weights, learned activation clip alpha"),
    "lsq": Family(LSQWeight, LSQAct, "LSQ: learned step size for weights and activations (k >= 2)"),
    "twn": Family(TernaryWeight, TernaryAct, "TWN/BWN: ternary (k=2) and binary (k=1) weights"),
}
NO_QUANTIZER = "none"
SCALE_CHOICES = ("auto",) + SCALE_MODES


def list_quantizers() -> list[str]:
    """Quantizer family names, plus 'none' (keep float)."""
    return [NO_QUANTIZER] + sorted(FAMILIES)


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise unknown_name("quantizer", name, list_quantizers())
    return FAMILIES[name]


@dataclass(frozen=True)
class QuantizerSpec:
    """Which quantizer family to use, and its options.

    scale: ``auto`` lets the weight quantizer pick (``WeightQuantizer.auto_scale``): ``none`` for
    layers followed by batch norm (paper-exact) and ``max`` for the others (LeNet, classifier
    layers); WRPN always ``max``. See ``lowbit.nn.convert``.
    """

    name: str = "dorefa"
    scale: str = "auto"
    pact_alpha_init: float = 8.0
    pact_alpha_decay: float = 5e-4

    def __post_init__(self) -> None:
        if self.name != NO_QUANTIZER:
            get_family(self.name)
        if self.scale not in SCALE_CHOICES:
            raise ConfigError(f"invalid quantizer scale {self.scale!r}; choose one of {', '.join(SCALE_CHOICES)}")
        if not self.pact_alpha_init > 0:
            raise ConfigError(f"pact_alpha_init must be > 0, got {self.pact_alpha_init}")

    @property
    def family(self) -> Family:
        return get_family(self.name)

    def make_weight(self, bits: int, weight: torch.Tensor, layer: str, scale: str) -> WeightQuantizer:
        return self.family.weight(bits, weight, layer, scale)

    def make_act(self, bits: int, layer: str) -> ActQuantizer:
        return self.family.act.build(bits, layer, self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizerSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown quantizer option(s): {', '.join(sorted(unknown))}")
        return cls(**data)
