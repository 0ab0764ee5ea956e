"""Integer grids of the quantizers: weight codes that reproduce the fake-quantized weights exactly,
and activation codes for the integer runtime and ONNX.

Weights. Every quantized weight tensor is stored as unsigned codes ``c`` in ``0 .. 2**k - 1``
with four numbers (``scale`` S, a float32; ``divisor`` d, ``code_mult`` g and ``zero_point`` z,
integers). The code's integer value is ``m = g*c - z`` and the nominal grid is
``w ≈ (S / d) * m``: the step the integer runtime and ONNX use. The exact float32 value of
code ``c`` (its *level*) is given by a rule that repeats the quantizer's own float32 operations,
in order, so the levels equal ``layer.effective_weight()`` bit for bit:

- ``mul_div``: ``level(c) = fl32(fl32(S * m) / d)`` (``d = 1`` makes the division exact);
- ``dorefa``: ``level(c) = fl32(S * fl32(fl32(2c / d) - 1))``, with ``g = 2``, ``z = d``.

| family / bits                 | rule    | S                    | d            | g | z           |
|-------------------------------|---------|----------------------|--------------|---|-------------|
| any family, k = 1 (±v)        | mul_div | v = max abs weight   | 1            | 2 | 1           |
| dorefa, pact, k >= 2          | dorefa  | output scale s       | 2^k - 1      | 2 | 2^k - 1     |
| wrpn, k >= 2; twn, k >= 3     | mul_div | s (twn: a = max abs) | 2^(k-1) - 1  | 1 | 2^(k-1) - 1 |
| twn, k = 2                    | mul_div | a                    | 1            | 1 | 1           |
| lsq, k >= 2                   | mul_div | step                 | 1            | 1 | 2^(k-1)     |

If a tensor's levels ever fail to match its fake-quantized weights bit for bit (a quantizer
computing in another order than its rule), export keeps the codes and stores the 2^k float32
levels as an explicit table (``table``) instead: exactness is the contract, the rule only saves
the table's bytes. "Bit for bit" means as float32 values: a fake-quant ``-0.0`` (e.g.
``round(-0.3) * s``) comes back as ``+0.0``, the only bit pattern that can differ; the two are
equal in every sum and product.

Activations (the input of a layer whose act bits are below 32) are uniform on ``[0, hi]``:
integer codes ``a`` in ``0 .. 2**k - 1`` with value ``a * step``. ``unit`` (dorefa, wrpn, twn):
``a = round(clamp(x, 0, 1) * n)``, step ``1/n``; ``pact``: ``a = round(clamp(x, 0, α) * (n/α))``,
step ``α/n``; ``lsq``: ``a = round(clamp(x / s, 0, n))``, step ``s``; ``n = 2**k - 1`` and the
float32 operations are the quantizers', so the codes are the ones the fake-quant model rounds to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.export.errors import ExportError
from lowbit.quant.base import ActQuantizer, WeightQuantizer

RULES = ("mul_div", "dorefa")
ACT_KINDS = ("unit", "pact", "lsq")


@dataclass(frozen=True)
class WeightGrid:
    """How k-bit codes map to integers (``m = code_mult * c - zero_point``) and to exact float32 levels."""

    bits: int
    rule: str
    scale: float  # S, a float32 value
    divisor: int = 1
    code_mult: int = 1
    zero_point: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ExportError(f"unknown weight rule {self.rule!r}; known rules: {', '.join(RULES)}")
        if not 1 <= self.bits <= 8 or self.divisor < 1 or self.code_mult not in (1, 2):
            raise ExportError(f"invalid weight grid {self}")
        if not (torch.tensor(self.scale, dtype=torch.float32).isfinite() and self.scale > 0):
            raise ExportError(f"weight grid scale must be a positive finite float32, got {self.scale!r}")

    @property
    def step(self) -> float:
        """The nominal spacing S / d (float64) of the integer values m."""
        return self.scale / self.divisor

    def int_values(self, codes: torch.Tensor) -> torch.Tensor:
        """m = g * c - z (int64)."""
        return codes.long() * self.code_mult - self.zero_point

    def int_range(self) -> tuple[int, int]:
        """Smallest and largest m over all 2**k codes."""
        return -self.zero_point, self.code_mult * ((1 << self.bits) - 1) - self.zero_point

    def levels(self) -> torch.Tensor:
        """The exact float32 value of every code 0 .. 2**k - 1, by the rule."""
        codes = torch.arange(1 << self.bits, dtype=torch.int64)
        s = torch.tensor(self.scale, dtype=torch.float32)
        if self.rule == "mul_div":
            return (s * self.int_values(codes).float()) / self.divisor
        return s * ((2.0 * codes.float()) / self.divisor - 1.0)

    def codes_of(self, weight: torch.Tensor) -> torch.Tensor:
        """Nearest code of every weight on the nominal grid (int64, clamped to 0 .. 2**k - 1)."""
        m = weight.double() / self.step
        codes = torch.round((m + self.zero_point) / self.code_mult)
        return codes.clamp_(0, (1 << self.bits) - 1).long()

    def to_dict(self) -> dict:
        return {"bits": self.bits, "rule": self.rule, "scale": self.scale, "divisor": self.divisor,
                "code_mult": self.code_mult, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, data: dict) -> WeightGrid:
        try:
            return cls(int(data["bits"]), str(data["rule"]), float(data["scale"]), int(data["divisor"]),
                       int(data["code_mult"]), int(data["zero_point"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"invalid weight grid description {data!r} ({exc})") from None


def _f32(value: torch.Tensor | float) -> float:
    return float(torch.as_tensor(value, dtype=torch.float32).detach().reshape(()))


def weight_grid(quantizer: WeightQuantizer, weight: torch.Tensor, fake: torch.Tensor) -> WeightGrid:
    """The grid of ``quantizer`` for the float ``weight`` whose fake-quantized value is ``fake``
    (each quantizer class gives its own: ``WeightQuantizer.integer_grid``)."""
    try:
        rule, scale, divisor, code_mult, zero_point = quantizer.integer_grid(weight, fake)
    except NotImplementedError:
        raise ExportError(f"layer {quantizer.layer!r}: no export grid for weight quantizer "
                          f"{type(quantizer).__name__}") from None
    return WeightGrid(quantizer.bits, rule, _f32(scale), divisor, code_mult, zero_point)


@dataclass
class EncodedWeight:
    """A weight tensor as codes on its grid, with an explicit level table when the rule is not exact."""

    grid: WeightGrid
    shape: tuple[int, ...]
    codes: torch.Tensor  # uint8, flattened
    table: torch.Tensor | None = None  # float32 (2**k,), only when the rule is not bit-exact

    def levels(self) -> torch.Tensor:
        return self.table if self.table is not None else self.grid.levels()

    def dequantize(self) -> torch.Tensor:
        """The exact float32 weight (equal to the fake-quantized weight)."""
        return self.levels()[self.codes.long()].reshape(self.shape)

    def int_values(self) -> torch.Tensor:
        """The integer values m of the codes (int64), in the weight's shape."""
        return self.grid.int_values(self.codes).reshape(self.shape)


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as float32 values, bit for bit once -0.0 is read as +0.0."""
    return a.shape == b.shape and bool(((a + 0.0).view(torch.int32) == (b + 0.0).view(torch.int32)).all())


def encode_weight(name: str, quantizer: WeightQuantizer, weight: torch.Tensor, fake: torch.Tensor) -> EncodedWeight:
    """Codes for ``fake`` (= quantizer(weight)) that reproduce it exactly; raises ExportError if impossible."""
    fake = fake.detach().float()
    if not bool(torch.isfinite(fake).all()):
        raise ExportError(f"{name}: the quantized weight holds NaN or infinite values; it cannot be exported")
    grid = weight_grid(quantizer, weight.detach(), fake)
    flat = fake.reshape(-1)
    codes = grid.codes_of(flat)
    levels = grid.levels()
    table = None
    if not same_values(levels[codes], flat):
        table = levels.clone()
        table[codes] = flat  # one value per code if the weights sit on a k-bit grid
        if not same_values(table[codes], flat):
            raise ExportError(f"{name}: the quantized weights are not on a {grid.bits}-bit grid "
                              f"(several values share one code); cannot export them exactly")
    return EncodedWeight(grid, tuple(fake.shape), codes.to(torch.uint8), table)


@dataclass(frozen=True)
class ActGrid:
    """The integer grid of the activations entering one layer."""

    bits: int
    kind: str  # "unit", "pact" or "lsq"
    param: float | None = None  # pact: alpha; lsq: step (float32 values, as stored)

    def __post_init__(self) -> None:
        if self.kind not in ACT_KINDS or not 1 <= self.bits <= 8:
            raise ExportError(f"invalid activation grid: kind {self.kind!r}, bits {self.bits}")
        if (self.kind == "unit") != (self.param is None):
            raise ExportError(f"activation grid {self.kind!r} {'takes no' if self.kind == 'unit' else 'needs a'} parameter")

    @property
    def n(self) -> int:
        return (1 << self.bits) - 1

    def _param(self) -> torch.Tensor:
        return torch.tensor(self.param, dtype=torch.float32).abs().clamp_min(1e-8)

    @property
    def step(self) -> float:
        """Value of one activation code (float64 of the quantizer's float32 step)."""
        if self.kind == "unit":
            return 1.0 / self.n
        if self.kind == "pact":
            return float(self._param() / self.n)
        return float(self._param())

    @property
    def high(self) -> float:
        """Clip ceiling: the value of the largest code, in float32 as the quantizer clips."""
        if self.kind == "unit":
            return 1.0
        if self.kind == "pact":
            return float(self._param())
        return float(self._param() * self.n)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (as float32 integer values) the fake-quant model rounds ``x`` to."""
        xf = x.float()
        if self.kind == "unit":
            return torch.round(torch.clamp(xf, 0.0, 1.0) * self.n)
        p = self._param()
        if self.kind == "pact":
            y = torch.where(xf >= p, p, torch.where(xf < 0, torch.zeros_like(xf), xf))
            return torch.round(y * (self.n / p))
        return torch.round(torch.clamp(xf / p, 0.0, self.n))

    def to_dict(self) -> dict:
        return {"bits": self.bits, "kind": self.kind}


def act_grid(quantizer: ActQuantizer) -> ActGrid:
    attr = quantizer.grid_param
    if attr is None:
        return ActGrid(quantizer.bits, quantizer.grid_kind)
    value = getattr(quantizer, attr)
    assert isinstance(value, nn.Parameter)
    return ActGrid(quantizer.bits, quantizer.grid_kind, _f32(value))
