"""LSQ: Learned Step Size Quantization (Esser et al. 2020, ICLR).

Weights (signed, k >= 2): Q_N = 2^(k-1), Q_P = 2^(k-1) - 1,
    w_q = round(clip(w / s, -Q_N, Q_P)) * s
    s learned, initialised at 2 mean|w| / sqrt(Q_P), its gradient scaled by g = 1/sqrt(N Q_P)
    (N = number of weights); u = w / s, levels -Q_N..Q_P, Δ = 1, o = 0. k = 1 is not defined.
Activations (unsigned): Q_N = 0, Q_P = 2^k - 1, s initialised from the first batch seen
    (2 mean|x| / sqrt(Q_P)), g = 1/sqrt(N_features Q_P).
The STE through round gives the paper's step-size gradient: round(v) - v inside the clip range,
-Q_N or Q_P outside.
Non-finite weights: the initial mean skips them; their outputs are NaN for NaN and Q_P s / -Q_N s
for +-inf, with no gradient to w or s (the step's gradient sums over the finite entries only).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.quant.base import ActQuantizer, IntegerGrid, WeightQuantizer
from lowbit.quant.ste import finite_abs_mean


class LSQWeight(WeightQuantizer):
    family = "lsq"
    supported_bits = tuple(range(2, 9))
    uses_output_scale = False

    def __init__(self, bits: int, weight: torch.Tensor, layer: str = "", scale: str = "none") -> None:
        super().__init__(bits, weight, layer, scale)
        self.q_n, self.q_p = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        init = 2.0 * finite_abs_mean(weight.detach()) / math.sqrt(self.q_p)
        self.step = nn.Parameter(init.clamp_min(1e-8).reshape(()).clone())
        self.grad_factor = 1.0 / math.sqrt(max(weight.numel(), 1) * self.q_p)

    def family_grid(self, w: torch.Tensor) -> IntegerGrid:
        return IntegerGrid("mul_div", self.step.detach().abs().clamp_min(1e-8), 1, 1, 1 << (self.bits - 1))

    @classmethod
    def levels(cls, k: int) -> torch.Tensor:
        return torch.arange(-(2 ** (k - 1)), 2 ** (k - 1), dtype=torch.float32)

    @classmethod
    def spacing(cls, k):
        return 1.0

    @classmethod
    def offset(cls, k):
        return 0.0

    @classmethod
    def unit_geometry(cls, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """In the unit-range view u = w / α (α = 2^(k-1) s): levels m / 2^(k-1), so Δ = 2^(1-k), o = 0."""
        return torch.pow(2.0, 1.0 - k), torch.zeros_like(k)

    @property
    def learned_scale(self) -> nn.Parameter:
        return self.step

    @torch.no_grad()
    def seed_scale(self, alpha: float) -> bool:
        """The step that puts the outer level at α: α / 2^(k-1)."""
        self.step.fill_(alpha / 2 ** (self.bits - 1))
        return True

    def normalize(self, w: torch.Tensor) -> torch.Tensor:
        return w / self.step.abs().clamp_min(1e-8)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _LSQWeightQuantize.apply(w, self.step.abs().clamp_min(1e-8), self.q_n, self.q_p, self.grad_factor)


class _LSQWeightQuantize(torch.autograd.Function):
    """round(clip(w / s, -Q_N, Q_P)) s in one autograd node, with LSQ's gradients: dw = 1 inside the
    clip range (boundaries included) and 0 outside; ds = g * (round(v) - v) inside, -Q_N / Q_P
    outside (v = w / s, g the gradient scale). A NaN/inf weight (NaN, or -Q_N s / Q_P s in the
    forward pass) gets dw = 0 and adds nothing to ds, which autograd through the formula would
    make NaN (0 x inf). Saves w and s, recomputes v in the backward pass."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int,  # type: ignore[override]
                g: float) -> torch.Tensor:
        ctx.save_for_backward(w, s)
        ctx.q_n, ctx.q_p, ctx.g = q_n, q_p, g
        return torch.round(torch.clamp(w / s, -q_n, q_p)) * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:  # type: ignore
        w, s = ctx.saved_tensors
        v = w / s
        # the clip of v with NaN/inf read as 0: c == v exactly inside the clip range, never at NaN/inf
        clipped = torch.clamp(torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0), -ctx.q_n, ctx.q_p)
        inside = clipped == v
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        dw = torch.where(inside, grad, zero)
        ds = (grad * torch.where(inside, torch.round(v) - v, clipped)).sum() * ctx.g
        return dw, ds.reshape(s.shape), None, None, None


class _LSQActQuantize(torch.autograd.Function):
    """round(clip(x / s, 0, Q_P)) s in one autograd node, with LSQ's gradients: dx = 1 inside the
    clip range (boundaries included) and 0 outside; ds = g * (round(v) - v) inside, Q_P above,
    0 below (v = x / s, g the gradient scale). Saves x and s, recomputes v in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, q_p: int, g: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, s)
        ctx.q_p, ctx.g = q_p, g
        return torch.round(torch.clamp(x / s, 0.0, q_p)) * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:  # type: ignore[override]
        x, s = ctx.saved_tensors
        v = x / s
        clipped = torch.clamp(v, 0.0, ctx.q_p)
        inside = clipped == v
        dx = torch.where(inside, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        ds = (grad * torch.where(inside, torch.round(v) - v, clipped)).sum() * ctx.g
        return dx, ds.reshape(s.shape), None, None


class LSQAct(ActQuantizer):
    family = "lsq"
    grid_kind, grid_param = "lsq", "step"

    def __init__(self, bits: int, layer: str = "") -> None:
        super().__init__(bits, layer)
        self.q_p = 2**bits - 1
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))

    def restore_grid_param(self, value: torch.Tensor) -> None:
        """The trained step, kept (not re-initialised from the first batch)."""
        super().restore_grid_param(value)
        self.initialized.fill_(True)

    @classmethod
    def levels(cls, k: int) -> torch.Tensor:
        return torch.arange(0, 2**k, dtype=torch.float32)

    @classmethod
    def spacing(cls, k):
        return 1.0

    @classmethod
    def offset(cls, k):
        return 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.training and xf.numel() and not bool(self.initialized):
            with torch.no_grad():
                mean = finite_abs_mean(xf)
                if bool(mean > 0):  # an empty or all-zero batch (dead ReLUs) does not set the step
                    self.step.copy_(2.0 * mean / math.sqrt(self.q_p))
                    self.initialized.fill_(True)
        features = math.prod(xf.shape[1:]) if xf.dim() > 1 else xf.numel()
        g = 1.0 / math.sqrt(max(features, 1) * self.q_p)
        return _LSQActQuantize.apply(xf, self.step.abs().clamp_min(1e-8), self.q_p, g).to(x.dtype)
