"""The quantizer contract every method in lowbit builds on (METHODS.md section 1).

A weight quantizer fake-quantizes a layer's float shadow weight ``w`` in the forward pass; the
optimizer keeps updating ``w`` (QAT with an FP copy). Besides the forward pass, every quantizer
exposes the geometry that the sinusoidal regularizers (SinReQ, WaveQ) align to:

- ``normalize(w)``: the normalized domain ``u(w)`` in which the levels are evenly spaced;
- ``levels(k)``: the level set in that domain for ``k`` bits;
- ``spacing(k)`` (``Δ(k)``) and ``offset(k)`` (``o(k)``): every level is ``o + m Δ`` for an
  integer ``m``, so ``sin^2(π (u - o) / Δ)`` is zero exactly on the levels. ``spacing`` and
  ``offset`` accept a float tensor ``k`` too (WaveQ's continuous bitwidth).

Output scale (``scale``): ``none`` (paper-exact: w_q lives in the unit range), ``max`` (a detached
``s = max|w|``: w_q = s * Q(w / s)), ``learned`` (``s`` a parameter initialised at ``max|w|``);
max|w| runs over the finite entries of w. Networks without batch norm after a layer (LeNet) need
``max`` or ``learned``.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.quant.bits import LOW_BITS, check_bits
from lowbit.quant.ste import finite_abs_max

SCALE_MODES = ("none", "max", "learned")


class IntegerGrid(NamedTuple):
    """How a weight quantizer's output maps to integer codes (``lowbit.export.grids.WeightGrid``):
    ``w_q = scale * (code_mult * c - zero_point) / divisor`` for codes c, by ``rule``."""

    rule: str  # "dorefa" or "mul_div"
    scale: torch.Tensor | float
    divisor: int
    code_mult: int
    zero_point: int


class Quantizer(nn.Module):
    """Common base: a family name, the bits it was built for, and the layer it serves."""

    family: ClassVar[str] = "?"
    supported_bits: ClassVar[tuple[int, ...]] = LOW_BITS

    def __init__(self, bits: int, layer: str = "") -> None:
        super().__init__()
        self.bits = check_bits(bits, layer, self.supported_bits, what=f"{self.family} bitwidth")
        self.layer = layer

    @classmethod
    def levels(cls, k: int) -> torch.Tensor:
        """The level set for ``k`` bits in the normalized domain, ascending."""
        raise NotImplementedError

    @classmethod
    def spacing(cls, k: float | torch.Tensor) -> float | torch.Tensor:
        """Δ(k): distance between neighbouring levels in the normalized domain."""
        raise NotImplementedError

    @classmethod
    def offset(cls, k: float | torch.Tensor) -> float | torch.Tensor:
        """o(k): every level equals o(k) + m Δ(k) for some integer m."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.bits}, layer={self.layer!r}"


class WeightQuantizer(Quantizer):
    """Fake-quantizes a weight tensor; subclasses implement ``normalize`` and ``forward``."""

    uses_output_scale: ClassVar[bool] = True

    def __init__(self, bits: int, weight: torch.Tensor, layer: str = "", scale: str = "none") -> None:
        super().__init__(bits, layer)
        if scale not in SCALE_MODES:
            raise ConfigError(f"invalid scale {scale!r} for layer {layer!r}: choose one of {', '.join(SCALE_MODES)}")
        self.scale_mode = scale if self.uses_output_scale else "none"
        if self.scale_mode == "learned":
            init = finite_abs_max(weight.detach()).clamp_min(1e-8)
            self.scale = nn.Parameter(init.reshape(()).clone())

    @classmethod
    def auto_scale(cls, behind_norm: bool) -> str:
        """The output scale ``scale="auto"`` picks: ``none`` (paper-exact) for a layer a norm layer
        follows (the norm absorbs the scale), ``max`` for the others."""
        return "none" if behind_norm else "max"

    @classmethod
    def unit_geometry(cls, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Δ, o) at continuous bits ``k`` in the unit-range view u = w / α that WaveQ learns α for."""
        return cls.spacing(k), cls.offset(k)

    @classmethod
    def unit_normalize(cls, w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """u at a continuous scale α, through the quantizer's own map (WaveQ's ``aligned`` domain):
        w / α, unless the family maps weights otherwise (DoReFa's tanh)."""
        return w / alpha

    @property
    def learned_scale(self) -> nn.Parameter | None:
        """The parameter that sets this quantizer's grid when it learns one (None: it does not)."""
        return self.scale if self.scale_mode == "learned" else None

    @torch.no_grad()
    def seed_scale(self, alpha: float) -> bool:
        """Start a learned grid at scale α (the outer level at α); False when there is none to seed."""
        if self.learned_scale is None:
            return False
        self.learned_scale.fill_(alpha)
        return True

    def output_scale(self, w: torch.Tensor) -> torch.Tensor | float:
        """The per-layer output scale s (1.0 for ``none``)."""
        if self.scale_mode == "max":
            return finite_abs_max(w.detach()).clamp_min(1e-8)
        if self.scale_mode == "learned":
            return self.scale.abs().clamp_min(1e-8)
        return 1.0

    def normalize(self, w: torch.Tensor) -> torch.Tensor:
        """u(w): the weight in the normalized domain where the levels are evenly spaced."""
        raise NotImplementedError

    def integer_grid(self, w: torch.Tensor, fake: torch.Tensor) -> IntegerGrid:
        """The integer grid of the fake-quantized ``fake = self(w)`` (export): binary weights are
        ``±max|fake|`` in every family; other bitwidths are the family's own."""
        if self.bits == 1:
            return IntegerGrid("mul_div", fake.abs().amax().clamp_min(1e-30), 1, 2, 1)
        return self.family_grid(w)

    def family_grid(self, w: torch.Tensor) -> IntegerGrid:
        raise NotImplementedError(f"{type(self).__name__} has no integer grid")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale_mode}"


class ActQuantizer(Quantizer):
    """Fake-quantizes the activation entering a layer.

    ``grid_kind`` and ``grid_param`` say how its codes are read (export): ``unit`` (clip to [0, 1],
    no parameter), ``pact`` (clip to [0, α], parameter ``alpha``) or ``lsq`` (step, parameter ``step``).
    """

    grid_kind: ClassVar[str] = "unit"
    grid_param: ClassVar[str | None] = None

    @torch.no_grad()
    def restore_grid_param(self, value: torch.Tensor) -> None:
        """Set the grid's trained parameter (a model rebuilt from an exported file)."""
        if self.grid_param is not None:
            getattr(self, self.grid_param).copy_(value)

    @classmethod
    def build(cls, bits: int, layer: str, options: object) -> ActQuantizer:
        """An instance for ``layer``; ``options`` is the ``QuantizerSpec`` (families with options of
        their own, PACT's α, read them from it)."""
        return cls(bits, layer)

    def aux_loss(self) -> torch.Tensor | None:
        """An extra loss term this quantizer wants (PACT's L2 on α); None if none."""
        return None


def uniform_levels(low: float, high: float, count: int) -> torch.Tensor:
    """``count`` evenly spaced levels from ``low`` to ``high`` in float64, then float32."""
    return torch.linspace(low, high, count, dtype=torch.float64).float()
