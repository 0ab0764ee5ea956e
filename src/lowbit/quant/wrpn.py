"""WRPN quantizers (Mishra et al. 2018, "WRPN: Wide Reduced-Precision Networks").

Weights, k >= 2: sign plus k-1 magnitude bits, zero is a level:
    u = clip(w / s, -1, 1),  w_q = s * round((2^(k-1) - 1) u) / (2^(k-1) - 1)
    levels i/(2^(k-1) - 1) for |i| <= 2^(k-1) - 1 (2^k - 1 levels), Δ = 1/(2^(k-1) - 1), o = 0
Weights, k = 1: w_q = s * sign(u) (zero maps to +1), levels ±1, Δ = 2, o = 1.
Activations: clip to [0, 1], then k-bit uniform (as DoReFa's).
Widening is a property of the model (``width_mult``); the quantizer knows nothing about it.
"""

from __future__ import annotations

import torch

from lowbit.quant.base import WeightQuantizer, uniform_levels
from lowbit.quant.dorefa import DoReFaAct
from lowbit.quant.ste import round_ste, sign_ste


class WRPNWeight(WeightQuantizer):
    family = "wrpn"

    @classmethod
    def levels(cls, k: int) -> torch.Tensor:
        if k == 1:
            return uniform_levels(-1.0, 1.0, 2)
        return uniform_levels(-1.0, 1.0, 2**k - 1)

    @classmethod
    def spacing(cls, k):
        if isinstance(k, int) and k == 1:
            return 2.0
        return 1.0 / (2.0 ** (k - 1) - 1.0)

    @classmethod
    def offset(cls, k):
        if isinstance(k, int) and k == 1:
            return 1.0
        return 0.0 * k if isinstance(k, torch.Tensor) else 0.0

    def normalize(self, w: torch.Tensor) -> torch.Tensor:
        return torch.clamp(w / self.output_scale(w), -1.0, 1.0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.output_scale(w)
        u = torch.clamp(w / s, -1.0, 1.0)
        if self.bits == 1:
            return s * sign_ste(u)
        n = 2 ** (self.bits - 1) - 1
        return s * round_ste(u * n) / n


class WRPNAct(DoReFaAct):
    family = "wrpn"
