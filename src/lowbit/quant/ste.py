"""Straight-through estimators and small numeric helpers used by every quantizer.

STE (Bengio et al. 2013; used by DoReFa, WRPN, PACT, LSQ): the forward pass rounds, the backward
pass treats rounding as the identity. Clipping is done with ``torch.clamp`` before rounding, so
the gradient is zero outside the clip range and one inside it, boundaries included (PyTorch's
clamp passes the gradient where ``min <= x <= max``).

Rounding mode: ``torch.round`` rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2).

Non-finite weights (``split_finite`` / ``restore_nonfinite``): a quantizer whose statistics or
learned scale would meet a NaN or infinite weight in the backward pass (0 x NaN = NaN would reach
every entry through a max, or a scale's gradient) computes on the weight with those entries set
to 0, masks its statistics on the finiteness of the raw weight, then gives the non-finite entries
their documented value (NaN stays NaN, +inf/-inf the top/bottom level), which carries no gradient.
"""

from __future__ import annotations

import math

import torch


class _StraightThrough(torch.autograd.Function):
    """Forward: ``y``. Backward: the incoming gradient to ``x``, zeroed where ``x`` is not finite.

    One autograd node: the forward pass costs a single ``isfinite`` beyond computing ``y``, the
    backward pass one ``where`` (the expression ``x + (y - x).detach()`` costs several passes over
    the tensor, loses precision when ``|x| >> |y|`` and gives NaN at x = +-inf).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(torch.isfinite(x))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (finite,) = ctx.saved_tensors
        return torch.where(finite, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None


def ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``y``. Backward: the gradient goes to ``x`` unchanged (zero where ``x`` is +-inf or NaN)."""
    return _StraightThrough.apply(x, y.detach())


class _ClipRoundSTE(torch.autograd.Function):
    """round(clamp(x, lo, hi) * n) / n with the clip's gradient: 1 where lo <= x <= hi, else 0.

    One autograd node for the whole activation quantizer: the mask is ``clamp(x) == x`` (true
    exactly inside the closed range, false for NaN), so the backward pass is a single ``where``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float, n: int) -> torch.Tensor:  # type: ignore[override]
        y = torch.clamp(x, lo, hi)
        ctx.save_for_backward(y == x)
        return torch.round(y * n) / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None, None, None


def clip_round_ste(x: torch.Tensor, lo: float, hi: float, n: int) -> torch.Tensor:
    """``round(clamp(x, lo, hi) * n) / n``, straight-through inside [lo, hi], zero gradient outside."""
    return _ClipRoundSTE.apply(x, lo, hi, n)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return ste(x, torch.round(x))


class _StraightThroughFinite(torch.autograd.Function):
    """Forward: ``y``. Backward: the incoming gradient to ``x``, unmasked (``x`` is finite)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def round_ste_finite(x: torch.Tensor) -> torch.Tensor:
    """:func:`round_ste` for an ``x`` with no NaN/inf (computed from ``split_finite``'s ``w0`` and
    bounded), without the finiteness mask: the same forward, one pass less each way."""
    return _StraightThroughFinite.apply(x, torch.round(x).detach())


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 for x >= 0, -1 for x < 0 (zero maps to +1 so there are exactly two levels), NaN stays NaN.

    Identity gradient (the caller clips first where a clip range applies).
    """
    sign = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    sign = torch.where(torch.isnan(x), x, sign)
    return ste(x, sign)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward: x. Backward: gradient multiplied by ``scale`` (LSQ-style gradient scaling, for WaveQ's β;
    LSQ's own weights and activations scale the step's gradient inside their autograd nodes)."""
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach())  # forward exactly x


def finite_abs_max(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the finite entries (0 if there are none); NaN/inf never poison the statistic."""
    finite = torch.isfinite(x)
    return torch.where(finite, x.abs(), torch.zeros_like(x)).amax() if x.numel() else x.new_zeros(())


def abs_max(x: torch.Tensor) -> torch.Tensor:
    """max |x| (0 for an empty ``x``), for a tensor known to be finite."""
    return x.abs().amax() if x.numel() else x.new_zeros(())


def finite_abs_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean |x| over the finite entries (and where ``mask`` holds); 0 when no entry qualifies."""
    keep = torch.isfinite(x) if mask is None else torch.isfinite(x) & mask
    total = torch.where(keep, x.abs(), torch.zeros_like(x)).sum()
    return total / keep.sum().clamp_min(1)


def keep_nan(reference: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Entries that are NaN in ``reference`` are NaN in the result (NaN never becomes a level)."""
    return torch.where(torch.isnan(reference), reference, out)


class _ZeroNonFinite(torch.autograd.Function):
    """Forward: ``w`` with NaN and +-inf set to 0 (finite entries bit for bit). Backward: the
    gradient unchanged; ``restore_nonfinite`` zeroes it at the non-finite entries."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def split_finite(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(finite, w0)``: where ``w`` is finite, and ``w`` with its other entries set to 0.

    A quantizer computes on ``w0`` and hands its output to :func:`restore_nonfinite`: no NaN/inf
    meets its backward pass, and since the gradient is zero at the output's non-finite entries
    and the computation is elementwise apart from detached statistics and max|.| (a 0 entry never
    raises a max, nor takes its gradient: d|t|/dt = 0 at t = 0), it stays zero back to ``w``
    there. Where zeros would count (a mean), mask the statistic with ``finite``.
    """
    finite = w.abs() < math.inf  # = torch.isfinite(w) (NaN < inf is False), ~2x faster on CPU
    return finite, _ZeroNonFinite.apply(w)


def restore_nonfinite(out: torch.Tensor, w: torch.Tensor, finite: torch.Tensor, low: float, high: float,
                      scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``out`` at the finite entries of ``w``; at the others NaN for NaN, ``high * scale`` for +inf
    and ``low * scale`` for -inf, carrying no gradient (to ``w`` or to anything in ``scale``)."""
    with torch.no_grad():
        fill = torch.clamp(w, low, high) * scale
    return torch.where(finite, out, fill)
