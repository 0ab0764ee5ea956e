"""DoReFa-Net quantizers (Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth CNNs ...").

Weights, k >= 2 (eq. 9 of the paper):
    u = tanh(v) / max|tanh(v)|, v = w / s            (u in [-1, 1])
    w_q = s * (2 q_k((u + 1) / 2) - 1),  q_k(x) = round((2^k - 1) x) / (2^k - 1)
    levels -1 + 2i/(2^k - 1) (mid-rise: no zero level), Δ = 2/(2^k - 1), o = Δ/2
Weights, k = 1 (as the authors' released code): w_q = s * E * sign(u), E = mean|v| (no gradient
    through E), u = v / E, levels ±1, Δ = 2, o = 1.
Activations (eq. 11): clip to [0, 1], then q_k; levels i/(2^k - 1), Δ = 1/(2^k - 1), o = 0.

Non-finite weights: max|tanh(v)| and E run over the entries where w is finite (tanh(+-inf) = +-1
is finite, so the mask is on w, not on tanh(v)); those entries' outputs are NaN for NaN and the
top/bottom level +-s (k = 1: +-s E) for +-inf, with no gradient to w or s; u(w) there is NaN for
NaN and +-1 for +-inf (k = 1: NaN and +-inf).
"""

from __future__ import annotations

import math

import torch

from lowbit.quant.base import ActQuantizer, IntegerGrid, WeightQuantizer, uniform_levels
from lowbit.quant.ste import (abs_max, clip_round_ste, finite_abs_max, finite_abs_mean, restore_nonfinite,
                              round_ste_finite, sign_ste, split_finite)


class DoReFaWeight(WeightQuantizer):
    family = "dorefa"

    def family_grid(self, w: torch.Tensor) -> IntegerGrid:
        n = (1 << self.bits) - 1
        return IntegerGrid("dorefa", self.output_scale(w), n, 2, n)

    @classmethod
    def unit_normalize(cls, w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """DoReFa's own map at scale α: tanh(w / α) / tanh(1), so that w = α sits on the top level."""
        return torch.tanh(w / alpha) / math.tanh(1.0)

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

    def _unit(self, v: torch.Tensor, finite: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | float]:
        """u from v = w / s, with the 1-bit magnitude E (1.0 for k >= 2).

        With ``finite`` (the finiteness of w), ``v`` is 0 where it is False (``split_finite``): E is
        the mean over ``finite``, and a 0 never raises max|tanh(v)|. Without it the statistics skip
        the entries where v (k >= 2: tanh(v)) is not finite.
        """
        if self.bits == 1:
            e = finite_abs_mean(v.detach(), finite).clamp_min(1e-12)
            return v / e, e
        t = torch.tanh(v)
        m = finite_abs_max(t) if finite is None else abs_max(t)
        return t / m.clamp_min(1e-12), 1.0

    def normalize(self, w: torch.Tensor) -> torch.Tensor:
        s = self.output_scale(w)
        if self.bits == 1:  # E skips the non-finite v; NaN and +-inf stay NaN and +-inf
            return self._unit(w / s, None)[0]
        finite, w0 = split_finite(w)
        return restore_nonfinite(self._unit(w0 / s, finite)[0], w, finite, -1.0, 1.0)  # +-inf -> +-1

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.output_scale(w)
        if self.bits == 1 and self.scale_mode != "learned":
            # s is a constant and E detached: sign's STE alone gives the non-finite entries zero
            # gradient, NaN stays NaN and +-inf maps to +-s E
            u, e = self._unit(w / s, None)
            return s * e * sign_ste(u)
        finite, w0 = split_finite(w)
        u, e = self._unit(w0 / s, finite)
        if self.bits == 1:
            return restore_nonfinite(s * e * sign_ste(u), w, finite, -1.0, 1.0, (s * e).detach())
        n = 2**self.bits - 1
        out = s * (2.0 * round_ste_finite((u + 1.0) / 2.0 * n) / n - 1.0)  # u in [-1, 1]: no NaN/inf to mask
        top = s.detach() if isinstance(s, torch.Tensor) else s  # the top level s (2 n / n - 1) = s exactly
        return restore_nonfinite(out, w, finite, -1.0, 1.0, top)


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
