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


class _PACTQuantize(torch.autograd.Function):
    """y_q = round(clip(x, 0, α) n / α) α / n in one autograd node, with the paper's gradients:
    dy/dx = 1 on [0, α) and 0 elsewhere; dy/dα = 1 where x >= α (at the boundaries too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, n: int) -> torch.Tensor:  # type: ignore[override]
        upper = x >= alpha
        ctx.save_for_backward((x >= 0) & ~upper, upper)
        y = torch.clamp(x, min=torch.zeros_like(alpha), max=alpha)
        return torch.round(y * (n / alpha)) * (alpha / n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        inside, upper = ctx.saved_tensors
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return torch.where(inside, grad, zero), torch.where(upper, grad, zero).sum(), None


class PACTWeight(DoReFaWeight):
    family = "pact"


class PACTAct(ActQuantizer):
    family = "pact"
    grid_kind, grid_param = "pact", "alpha"
    levels = DoReFaAct.levels
    spacing = DoReFaAct.spacing
    offset = DoReFaAct.offset

    @classmethod
    def build(cls, bits: int, layer: str, options: object) -> PACTAct:
        return cls(bits, layer, getattr(options, "pact_alpha_init", 8.0), getattr(options, "pact_alpha_decay", 5e-4))

    def __init__(self, bits: int, layer: str = "", alpha_init: float = 8.0, alpha_decay: float = 5e-4) -> None:
        super().__init__(bits, layer)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.alpha_decay = alpha_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.abs().clamp_min(1e-8)
        return _PACTQuantize.apply(x.float(), alpha, 2**self.bits - 1).to(x.dtype)

    def aux_loss(self) -> torch.Tensor:
        return 0.5 * self.alpha_decay * self.alpha**2
