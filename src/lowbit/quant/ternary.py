"""Binary and ternary weights: BWN (Rastegari et al. 2016) and TWN (Li, Zhang & Liu 2016).

k = 1 (binary): a = mean|w|, w_q = a sign(w); u = w / a, levels ±1, Δ = 2, o = 1.
k = 2 (ternary, TWN): t = 0.7 mean|w|, a = mean of |w| over |w| > t,
    w_q = a * (1 if w > t, 0 if |w| <= t, -1 if w < -t); u = w / a, levels {-1, 0, 1}, Δ = 1, o = 0.
k >= 3: TWN is defined only for k <= 2; wider layers (the pinned 8-bit first and last layers)
    use the symmetric uniform quantizer with s = max|w| (WRPN's levels at output scale ``max``).
a and t carry no gradient; the STE passes the gradient to w unchanged (zero at NaN/inf entries).
Non-finite weights: a and t skip them; NaN stays NaN, +-inf maps to +-a.
Activations: DoReFa's.
"""

from __future__ import annotations

import torch

from lowbit.quant.base import IntegerGrid, WeightQuantizer, uniform_levels
from lowbit.quant.dorefa import DoReFaAct
from lowbit.quant.ste import finite_abs_max, finite_abs_mean, keep_nan, round_ste, sign_ste, ste
from lowbit.quant.wrpn import WRPNWeight

TWN_THRESHOLD = 0.7


class TernaryWeight(WeightQuantizer):
    family = "twn"
    uses_output_scale = False

    @classmethod
    def levels(cls, k: int) -> torch.Tensor:
        if k == 1:
            return uniform_levels(-1.0, 1.0, 2)
        return WRPNWeight.levels(k)

    spacing = WRPNWeight.spacing
    offset = WRPNWeight.offset

    def family_grid(self, w: torch.Tensor) -> IntegerGrid:
        n = (1 << (self.bits - 1)) - 1  # 1 at 2 bits: {-a, 0, a}
        return IntegerGrid("mul_div", self.level_scale(w), n, 1, n)

    def level_scale(self, w: torch.Tensor) -> torch.Tensor:
        """The (detached) scale a: values are a * level."""
        w = w.detach()
        if self.bits == 1:
            return finite_abs_mean(w).clamp_min(1e-12)
        if self.bits == 2:
            threshold = TWN_THRESHOLD * finite_abs_mean(w)
            return finite_abs_mean(w, w.abs() > threshold).clamp_min(1e-12)
        return finite_abs_max(w).clamp_min(1e-12)

    def normalize(self, w: torch.Tensor) -> torch.Tensor:
        return w / self.level_scale(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a = self.level_scale(w)
        if self.bits == 1:
            return ste(w, a * sign_ste(w.detach()))  # gradient to w unchanged (not scaled by a)
        if self.bits == 2:
            threshold = TWN_THRESHOLD * finite_abs_mean(w.detach())
            ternary = torch.sign(w.detach()) * (w.detach().abs() > threshold)
            return keep_nan(w.detach(), ste(w, a * ternary))  # (detached: no gradient at NaN entries)
        n = 2 ** (self.bits - 1) - 1
        return a * round_ste(torch.clamp(w / a, -1.0, 1.0) * n) / n


class TernaryAct(DoReFaAct):
    family = "twn"
