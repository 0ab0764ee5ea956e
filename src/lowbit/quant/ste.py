"""Straight-through estimators and small numeric helpers used by every quantizer.

STE (Bengio et al. 2013; used by DoReFa, WRPN, PACT, LSQ): the forward pass rounds, the backward
pass treats rounding as the identity. Clipping is done with ``torch.clamp`` before rounding, so
the gradient is zero outside the clip range and one inside it, boundaries included (PyTorch's
clamp passes the gradient where ``min <= x <= max``).

Rounding mode: ``torch.round`` rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2).
"""

from __future__ import annotations

import torch


def ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``y``. Backward: the gradient goes to ``x`` unchanged (zero where ``x`` is +-inf or NaN).

    (``x + (y - x).detach()`` would lose precision when ``|x| >> |y|`` and give NaN at x = +-inf.)
    """
    delta = x - x.detach()  # exactly 0 where x is finite, carries x's gradient
    return y.detach() + torch.where(torch.isfinite(x), delta, torch.zeros_like(delta))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return ste(x, torch.round(x))


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 for x >= 0, -1 for x < 0 (zero maps to +1 so there are exactly two levels), NaN stays NaN.

    Identity gradient (the caller clips first where a clip range applies).
    """
    sign = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    sign = torch.where(torch.isnan(x), x, sign)
    return ste(x, sign)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward: x. Backward: gradient multiplied by ``scale`` (LSQ's step-size gradient scaling)."""
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach())  # forward exactly x


def finite_abs_max(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the finite entries (0 if there are none); NaN/inf never poison the statistic."""
    finite = torch.isfinite(x)
    return torch.where(finite, x.abs(), torch.zeros_like(x)).amax() if x.numel() else x.new_zeros(())


def finite_abs_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean |x| over the finite entries (and where ``mask`` holds); 0 when no entry qualifies."""
    keep = torch.isfinite(x) if mask is None else torch.isfinite(x) & mask
    total = torch.where(keep, x.abs(), torch.zeros_like(x)).sum()
    return total / keep.sum().clamp_min(1)


def keep_nan(reference: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Entries that are NaN in ``reference`` are NaN in the result (NaN never becomes a level)."""
    return torch.where(torch.isnan(reference), reference, out)
