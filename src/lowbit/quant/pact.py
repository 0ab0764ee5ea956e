"""PACT: Parameterized Clipping Activation (Choi et al. 2018).

Activations: y = clip(x, 0, α), y_q = round(y (2^k - 1) / α) α / (2^k - 1), α learned per layer
(init 8), with the STE over the whole quantization so that dy_q/dα = 1 where x >= α and 0
elsewhere (the paper's eq. 3), and an L2 penalty (decay/2) α² returned by ``aux_loss``.
Weights: DoReFa's weight quantizer (as in the paper).
Normalized domain of activations: y / α, levels i/(2^k - 1).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.base import ActQuantizer
from lowbit.quant.dorefa import DoReFaAct, DoReFaWeight
from lowbit.quant.ste import ste


class PACTWeight(DoReFaWeight):
    family = "pact"


class PACTAct(ActQuantizer):
    family = "pact"
    levels = DoReFaAct.levels
    spacing = DoReFaAct.spacing
    offset = DoReFaAct.offset

    def __init__(self, bits: int, layer: str = "", alpha_init: float = 8.0, alpha_decay: float = 5e-4) -> None:
        super().__init__(bits, layer)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.alpha_decay = alpha_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        alpha = self.alpha.abs().clamp_min(1e-8)
        # clip(x, 0, α) with the paper's gradients at the boundaries too: dy/dx = 1 on [0, α),
        # dy/dα = 1 where x >= α (relu/minimum would give 0 at x = 0 and split 1/2-1/2 at x = α)
        y = torch.where(xf >= alpha, alpha, torch.where(xf < 0, torch.zeros_like(xf), xf))
        n = 2**self.bits - 1
        y_q = torch.round(y * (n / alpha)) * (alpha / n)
        return ste(y, y_q).to(x.dtype)

    def aux_loss(self) -> torch.Tensor:
        return 0.5 * self.alpha_decay * self.alpha**2
