"""DoReFa-Net quantizers (Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth CNNs ...").

Weights, k >= 2 (eq. 9 of the paper):
    u = tanh(v) / max|tanh(v)|, v = w / s            (u in [-1, 1])
    w_q = s * (2 q_k((u + 1) / 2) - 1),  q_k(x) = round((2^k - 1) x) / (2^k - 1)
    levels -1 + 2i/(2^k - 1) (mid-rise: no zero level), Δ = 2/(2^k - 1), o = Δ/2
Weights, k = 1 (as the authors' released code): w_q = s * E * sign(u), E = mean|v| (no gradient
    through E), u = v / E, levels ±1, Δ = 2, o = 1.
Activations (eq. 11): clip to [0, 1], then q_k; levels i/(2^k - 1), Δ = 1/(2^k - 1), o = 0.
"""

from __future__ import annotations

import torch

from lowbit.quant.base import ActQuantizer, WeightQuantizer, uniform_levels
from lowbit.quant.ste import clip_round_ste, finite_abs_max, finite_abs_mean, round_ste, sign_ste


class DoReFaWeight(WeightQuantizer):
    family = "dorefa"

    @classmethod
    def levels(cls, k: int) -> torch.Tensor:
        return uniform_levels(-1.0, 1.0, 2 if k == 1 else 2**k)

    @classmethod
    def spacing(cls, k):
        if isinstance(k, int) and k == 1:
            return 2.0
        return 2.0 / (2.0**k - 1.0)

    @classmethod
    def offset(cls, k):
        if isinstance(k, int) and k == 1:
            return 1.0
        return cls.spacing(k) / 2.0

    def _unit(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """u from v = w / s, with the 1-bit magnitude E (1.0 for k >= 2)."""
        if self.bits == 1:
            e = finite_abs_mean(v.detach()).clamp_min(1e-12)
            return v / e, e
        t = torch.tanh(v)
        return t / finite_abs_max(t).clamp_min(1e-12), 1.0

    def normalize(self, w: torch.Tensor) -> torch.Tensor:
        return self._unit(w / self.output_scale(w))[0]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.output_scale(w)
        u, e = self._unit(w / s)
        if self.bits == 1:
            return s * e * sign_ste(u)
        n = 2**self.bits - 1
        return s * (2.0 * round_ste((u + 1.0) / 2.0 * n) / n - 1.0)


class DoReFaAct(ActQuantizer):
    family = "dorefa"

    @classmethod
    def levels(cls, k: int) -> torch.Tensor:
        return uniform_levels(0.0, 1.0, 2**k)

    @classmethod
    def spacing(cls, k):
        return 1.0 / (2.0**k - 1.0)

    @classmethod
    def offset(cls, k):
        return 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clip_round_ste(x.float(), 0.0, 1.0, 2**self.bits - 1).to(x.dtype)
