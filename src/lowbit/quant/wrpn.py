"""WRPN quantizers (Mishra et al. 2018, "WRPN: Wide Reduced-Precision Networks").

Weights, k >= 2: sign plus k-1 magnitude bits, zero is a level:
    u = clip(w / s, -1, 1),  w_q = s * round((2^(k-1) - 1) u) / (2^(k-1) - 1)
    levels i/(2^(k-1) - 1) for |i| <= 2^(k-1) - 1 (2^k - 1 levels), Δ = 1/(2^(k-1) - 1), o = 0
Weights, k = 1: w_q = s * sign(u) (zero maps to +1), levels ±1, Δ = 2, o = 1.
Activations: clip to [0, 1], then k-bit uniform (as DoReFa's).
Output scale ``auto``: ``learned`` (from max|w|) behind a batch norm, ``max`` elsewhere (``WRPNWeight.auto_scale``).
Widening is a property of the model (``width_mult``); the quantizer knows nothing about it.
Non-finite weights: the clip maps +-inf to the top/bottom level, NaN stays NaN, and neither passes
a gradient (to w, nor, at scale ``learned``, to s); max|w| (scale ``max``) skips them.
"""

from __future__ import annotations

import torch

from lowbit.quant.base import IntegerGrid, WeightQuantizer, uniform_levels
from lowbit.quant.dorefa import DoReFaAct
from lowbit.quant.ste import restore_nonfinite, round_ste, round_ste_finite, sign_ste, split_finite


class WRPNWeight(WeightQuantizer):
    family = "wrpn"

    def family_grid(self, w: torch.Tensor) -> IntegerGrid:
        n = (1 << (self.bits - 1)) - 1
        return IntegerGrid("mul_div", self.output_scale(w), n, 1, n)

    @classmethod
    def auto_scale(cls, behind_norm: bool) -> str:
        """WRPN's clip range [-1, 1] is not scale-free: behind a batch norm the unit range rounds
        typical weights (|w| << 1 / (2 (2^(k-1) - 1))) all to zero (conv1d on mnist1d at 2 bits
        stayed at 18-19%), so ``max`` elsewhere and, behind a norm (which absorbs any scale), a
        ``learned`` scale started at max|w|: at ``max`` most 2-bit weights sit in the zero bin and
        conv1d w2a2 from float weights fell to 18.6% (76% on validation with a learned scale
        88.8%, benchmarks/results/recipe_tuning.md)."""
        return "learned" if behind_norm else "max"

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

    def _quantize(self, w: torch.Tensor, s: torch.Tensor | float, finite_input: bool = False) -> torch.Tensor:
        u = torch.clamp(w / s, -1.0, 1.0)
        if self.bits == 1:
            return s * sign_ste(u)
        n = 2 ** (self.bits - 1) - 1
        return s * (round_ste_finite if finite_input else round_ste)(u * n) / n

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.output_scale(w)
        if self.scale_mode != "learned":  # s is a constant: the clip and the STE zero the gradient at NaN/inf
            return self._quantize(w, s)
        # a learned s would get 0 x NaN from the non-finite entries: quantize the finite ones only
        finite, w0 = split_finite(w)
        n = 1 if self.bits == 1 else 2 ** (self.bits - 1) - 1
        top = (s * n / n).detach()  # the top level, computed as the quantizer does
        return restore_nonfinite(self._quantize(w0, s, finite_input=True), w, finite, -1.0, 1.0, top)


class WRPNAct(DoReFaAct):
    family = "wrpn"
