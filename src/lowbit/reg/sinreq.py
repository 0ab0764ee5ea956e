"""SinReQ: sinusoidal regularization towards the quantizer's levels at fixed target bitwidths.

Paper: Elthakeb, Pilligundla, Esmaeilzadeh, "SinReQ: Generalized Sinusoidal Regularization for
Low-Bitwidth Deep Quantized Training" (METHODS.md section 2). Per quantized layer l with target
bits k_l (the layer's weight bits), with the quantizer's normalized domain u(w), spacing Δ(k) and
offset o(k) (``lowbit.quant.base``):

    R_l = mean_i sin^2( π (u(w_i) - o(k_l)) / Δ(k_l) )              (the SinReQ penalty)
    L   = L_task + λ(t) Σ_l m_l R_l                                 (m_l: optional per-layer λ)

The sinusoid is zero on every point o + mΔ, equals 1 at the midpoints, and has period Δ; with
the range term below (on by default) beyond the outer levels, its zeros are exactly the levels.

Domains: ``aligned`` (default) uses u = weight_quantizer.normalize(w), so the minima sit exactly
on the quantizer's levels; ``raw`` puts the raw float weight w in place of u with the same Δ and o
(the authors' released code, which for DoReFa only approximately matches the tanh-space levels).

Two safeguards (our additions, not in the paper; both on by default):

- No gradient into the quantizer (``train_quantizer=False``). u(w) divides by the quantizer's
  learned parameters (the learned output scale of DoReFa/WRPN/PACT weights, LSQ's step), and the
  penalty can be lowered by moving the grid instead of the weights: growing the scale until every
  weight rounds to 0 (an MLP on digits, LSQ 3 bits, λ=1, 300 steps: the steps grew 50-100x, every
  weight quantized to 0, accuracy fell to chance while the grid distance looked excellent;
  ``benchmarks/sinreq_cheat.py``).
  So u is evaluated with every parameter of the weight quantizer detached: the penalty's gradient
  reaches the weights only, and the quantizer's parameters are trained by the task loss alone
  (the gradient with respect to the weights is unchanged). ``train_quantizer=True`` restores the
  old behaviour (the penalty's gradient also reaches the quantizer's parameters).
- Range term (``range_penalty=True``). The sinusoid is also zero beyond the outer levels (at
  u = ±3, ±5, ... for 1-bit DoReFa, TWN and LSQ, whose u is unbounded), pulling the tails towards
  levels that do not exist. For u beyond the outer levels lo = levels(k)[0], hi = levels(k)[-1],
  with d = |u - clamp(u, lo, hi)| / Δ the distance in grid steps, the per-weight value is
  sin^2(π d) for d <= 1/4 (the sinusoid itself) and 1/2 + π (d - 1/4) beyond: continuous with a
  continuous slope, > 0 and increasing for every d > 0, with a gradient never steeper than the
  sinusoid's (π/Δ), so a few far outliers cannot dominate the weights' gradient. The zeros of the
  penalty are then exactly the levels. Inside [lo, hi] the value is the sinusoid's. Equal to
  sin^2 at v = clamp(u, lo - Δ/4, hi + Δ/4) plus π |u - v| / Δ. Needs integer bits (a continuous
  k has no level set): pass ``range_penalty=False`` for the paper's pure sinusoid. Only quantizers
  whose u is unbounded are affected (DoReFa/PACT k = 1, TWN k <= 2, LSQ; ``raw`` domain):
  DoReFa k >= 2 and WRPN map u into [-1, 1] (WRPN clamps, so its weights beyond the scale get no
  SinReQ gradient, as they get none from the task loss). WaveQ's range term (``lowbit.reg.waveq``)
  is the same idea with a quadratic (d^2) growth added on top of the sinusoid.

Implementation note: the sinusoid is computed as (1 - cos(2π (u - o) / Δ)) / 2 (``sin2_grid``),
the same function as sin^2 with one transcendental op, straight on the phase (no reduction of
x = (u - o)/Δ to x - round(x)): float32 keeps it below 1e-9 of zero on the levels for |x| up to a
few hundred (LSQ's u = w/s reaches 2^(k-1) = 128 at 8 bits). At integer bits the layer penalty
(mean, range term included) and its gradient (π/(nΔ)) sin(2π (v - o)/Δ) are one fused autograd
node (``_SinReQMean``), which costs about what the sinusoid alone cost through autograd.

Modes: this module gives the penalty; both of METHODS' modes use it. On top of quantized training
(the model has been through ``quantize_``; ``lowbit train --sinreq``, ``--sinreq-mode qat``), and
the float pre-quantization phase (``--sinreq-mode pre``), built in ``lowbit.reg.sinreq_training``:
the quantizers stay attached so the penalty uses their geometry, the forward pass runs float
(``set_fake_quant(model, False)``) during training and fake quantization is switched back on after.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from lowbit.errors import ConfigError, did_you_mean
from lowbit.nn.convert import quantized_layers
from lowbit.nn.modules import QuantLayer
from lowbit.quant.base import Quantizer
from lowbit.train.loop import LossTerm

DOMAINS = ("aligned", "raw")
RANGE_KNEE = 0.25  # grid steps beyond the outer level where the range term turns linear


def sin2_grid(u: torch.Tensor, spacing: float | torch.Tensor, offset: float | torch.Tensor) -> torch.Tensor:
    """Elementwise sin^2(π (u - offset) / spacing): 0 on the grid offset + mΔ, 1 halfway between.

    Computed as (1 - cos(2π (u - o) / Δ)) / 2, the same function with one transcendental op and
    no power (measured ~25% faster than sin(.)**2 on CPU); float32 keeps it below 1e-9 of zero on
    the levels for |u - o| / Δ up to a few hundred (LSQ's 8-bit range).
    """
    return 0.5 - 0.5 * torch.cos((u - offset) * (2.0 * math.pi / spacing))


@functools.lru_cache(maxsize=None)
def _level_range(quantizer_cls: type[Quantizer], k: int) -> tuple[float, float]:
    levels = quantizer_cls.levels(k)
    return float(levels[0]), float(levels[-1])


def level_range(quantizer_cls: type[Quantizer], k: int | float | torch.Tensor) -> tuple[float, float]:
    """(lowest, highest) level of ``quantizer_cls`` at integer bits ``k`` in the normalized domain."""
    value = float(k) if not isinstance(k, torch.Tensor) or k.numel() == 1 else math.nan
    if not value.is_integer():
        raise ConfigError(f"the SinReQ range term needs integer bits (a level set), got {k!r}; "
                          "use range_penalty=False for the pure sinusoid")
    return _level_range(quantizer_cls, int(value))


def _range_clamp(u: torch.Tensor, k: int | float | torch.Tensor, quantizer_cls: type[Quantizer],
                 spacing: float) -> torch.Tensor:
    """u clamped to [lo - Δ/4, hi + Δ/4]: the sinusoid's argument under the range term."""
    lo, hi = level_range(quantizer_cls, k)
    margin = RANGE_KNEE * float(spacing)
    return u.clamp(lo - margin, hi + margin)


def sinreq_values(u: torch.Tensor, k: int | float | torch.Tensor, quantizer_cls: type[Quantizer],
                  range_penalty: bool = True) -> torch.Tensor:
    """The per-element SinReQ penalty of ``u`` at ``k`` bits of ``quantizer_cls``.

    sin^2(π (u - o(k)) / Δ(k)); with ``range_penalty`` (integer k only), u beyond the outer levels
    at d = |u - clamp(u, lo, hi)| / Δ grid steps pays sin^2(π d) up to d = 1/4, then 1/2 + π (d - 1/4):
    zero exactly on the levels, > 0 and increasing beyond them (see the module docstring). Computed
    as sin^2 at v = clamp(u, lo - Δ/4, hi + Δ/4) plus π |u - v| / Δ.
    """
    spacing, offset = quantizer_cls.spacing(k), quantizer_cls.offset(k)
    if not range_penalty:
        return sin2_grid(u, spacing, offset)
    v = _range_clamp(u, k, quantizer_cls, spacing)
    return sin2_grid(v, spacing, offset) + (math.pi / spacing) * (u - v).abs()


class _SinReQMean(torch.autograd.Function):
    """mean sin^2(π (v - o) / Δ) + (π/Δ) mean |u - v| with v = clamp(u, lo, hi) (the knees a quarter
    step beyond the outer levels; ``lo`` None: v = u and no second term), in one autograd node.

    The gradient is (π / (n Δ)) sin(2π (v - o) / Δ) everywhere: between the knees the sinusoid's;
    beyond them v sits a quarter period past a level, where that sine is ±1 = sign(u - v), the
    slope of the linear part. Two kernels backward and no intermediate kept but the phase (the
    same penalty through autograd ops, clamp + where + abs, took 1.3-1.9x the pure sinusoid's
    time for a forward and backward pass on LeNet-5; fused, it takes about the sinusoid's).
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, spacing: float, offset: float,  # type: ignore[override]
                lo: float | None, hi: float | None) -> torch.Tensor:
        v = u if lo is None else u.clamp(lo, hi)
        x = (v - offset).mul_(2.0 * math.pi / spacing)
        value = 0.5 - 0.5 * torch.cos(x).mean()
        if lo is not None:
            value = value + (math.pi / spacing) * (u - v).abs_().mean()
        ctx.save_for_backward(x)
        ctx.scale = math.pi / (spacing * u.numel())
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.sin(x).mul_(grad * ctx.scale), None, None, None, None


def sinreq_penalty(u: torch.Tensor, k: int | float | torch.Tensor, quantizer_cls: type[Quantizer],
                   range_penalty: bool = True) -> torch.Tensor:
    """The mean of :func:`sinreq_values` (0 for an empty ``u``); k may be a continuous tensor only
    with ``range_penalty=False``. At integer bits the value and its gradient come from one fused
    autograd node (``_SinReQMean``); a tensor geometry (continuous k) goes through autograd."""
    if u.numel() == 0:
        return u.new_zeros(())
    spacing, offset = quantizer_cls.spacing(k), quantizer_cls.offset(k)
    lo = hi = None
    if range_penalty:
        lo, hi = level_range(quantizer_cls, k)
        margin = RANGE_KNEE * float(spacing)
        lo, hi = lo - margin, hi + margin
    if isinstance(spacing, torch.Tensor) or isinstance(offset, torch.Tensor):
        return sinreq_values(u, k, quantizer_cls, range_penalty).mean()
    return _SinReQMean.apply(u, float(spacing), float(offset), lo, hi)


@contextmanager
def detached_parameters(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block, what the modules' parameters compute records no gradient for them.

    Their ``requires_grad`` is switched off and restored on exit (exceptions included), which
    costs nothing per element: unlike ``torch.func.functional_call`` no attribute is swapped. The
    modules must not be used by another thread meanwhile; parameters are leaf tensors (``nn.Parameter``).
    """
    flipped = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in flipped:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in flipped:
            p.requires_grad_(True)


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown SinReQ domain {domain!r}{did_you_mean(str(domain), DOMAINS)}; "
                          f"choose one of: {', '.join(DOMAINS)}")
    return domain


def layer_penalty(layer: QuantLayer, domain: str = "aligned", *, train_quantizer: bool = False,
                  range_penalty: bool = True) -> torch.Tensor:
    """R_l of one quantized layer at its weight bits, in the ``aligned`` (u(w)) or ``raw`` (w) domain.

    ``train_quantizer`` False (default): u(w) is computed with the weight quantizer's parameters
    detached, so the gradient reaches ``layer.weight`` only. ``range_penalty``: the range term.
    """
    _check_domain(domain)
    quantizer = layer.weight_quantizer
    if quantizer is None:
        name = getattr(layer, "layer_name", "?")
        raise ConfigError(f"layer {name!r} has float weights: SinReQ needs a weight quantizer")
    if domain == "raw":
        u = layer.weight
    elif train_quantizer:
        u = quantizer.normalize(layer.weight)
    else:
        with detached_parameters((quantizer,)):
            u = quantizer.normalize(layer.weight)
    return sinreq_penalty(u, quantizer.bits, type(quantizer), range_penalty)


def _weight_quantized(model: nn.Module) -> dict[str, QuantLayer]:
    return {name: m for name, m in quantized_layers(model).items() if m.weight_quantizer is not None}


class SinReQ:
    """The SinReQ loss term: ``model -> Σ_l m_l R_l`` over the layers with a weight quantizer.

    ``multipliers`` maps layer names to per-layer λ factors (default 1.0 for the others); a name
    that is not a weight-quantized layer of ``model`` raises ``ConfigError``.

    ``train_quantizer`` (default False): whether the penalty's gradient may reach the weight
    quantizers' parameters (learned output scale, LSQ step). Off, the penalty moves the weights
    only and cannot shrink itself by stretching the grid; on is the behaviour before issue 15
    (see the module docstring). ``range_penalty`` (default True): weights beyond the outer levels
    pay a penalty growing with their distance instead of the sinusoid's phantom zeros.
    """

    name = "sinreq"

    def __init__(self, model: nn.Module, domain: str = "aligned",
                 multipliers: Mapping[str, float] | None = None, *, train_quantizer: bool = False,
                 range_penalty: bool = True) -> None:
        self.domain = _check_domain(domain)
        self.train_quantizer = bool(train_quantizer)
        self.range_penalty = bool(range_penalty)
        layers = _weight_quantized(model)
        if not layers:
            raise ConfigError("SinReQ needs a model with quantized weights: call lowbit.nn.quantize_ first")
        self.multipliers: dict[str, float] = {}
        for key, value in (multipliers or {}).items():
            if key not in layers:
                raise ConfigError(f"SinReQ multiplier for unknown layer {key!r}{did_you_mean(str(key), layers)}; "
                                  f"weight-quantized layers: {', '.join(layers)}")
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"SinReQ multiplier for layer {key!r} must be finite and >= 0, got {value}")
            self.multipliers[key] = value
        self._layers = layers  # bound once: a training step does not walk the module tree

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The penalty of the layers bound at construction (re-create SinReQ after re-quantizing)."""
        terms = [self.multipliers.get(name, 1.0)
                 * layer_penalty(layer, self.domain, train_quantizer=self.train_quantizer,
                                 range_penalty=self.range_penalty)
                 for name, layer in self._layers.items()]
        if not terms:
            ref = next(model.parameters(), None)
            return torch.zeros((), device=ref.device if ref is not None else "cpu")
        return torch.stack(terms).sum()

    def as_loss_term(self, schedule: Callable[[float], float] | float = 1.0) -> LossTerm:
        """``LossTerm("sinreq", self, schedule)``: schedule is a λ or a callable of progress."""
        return LossTerm(self.name, self, schedule)

    def __repr__(self) -> str:
        return (f"SinReQ(domain={self.domain!r}, multipliers={self.multipliers!r}, "
                f"train_quantizer={self.train_quantizer}, range_penalty={self.range_penalty})")


@torch.no_grad()
def layer_grid_distance(layer: QuantLayer) -> float:
    """mean over finite entries of |u - nearest level| / Δ for one layer (NaN if none is finite)."""
    quantizer = layer.weight_quantizer
    cls, k = type(quantizer), quantizer.bits
    u = quantizer.normalize(layer.weight.detach()).detach().flatten()
    u = u[torch.isfinite(u)]
    if u.numel() == 0:
        return float("nan")
    levels = cls.levels(k).to(device=u.device, dtype=u.dtype)
    hi = torch.bucketize(u, levels).clamp(max=levels.numel() - 1)
    lo = (hi - 1).clamp(min=0)
    dist = torch.minimum((u - levels[lo]).abs(), (u - levels[hi]).abs())
    return float(dist.mean() / float(cls.spacing(k)))


def grid_distance(model: nn.Module) -> tuple[float, dict[str, float]]:
    """How far the weights sit from the levels, in units of Δ: (mean over layers, {layer: value}).

    Per layer: mean |u(w) - nearest level| / Δ in the normalized domain (detached). Within the
    level range this is in [0, 0.5]; weights beyond the outer levels (LSQ, ternary, 1-bit) can
    exceed 0.5. The mean over layers is NaN when no layer has quantized weights.
    """
    per_layer = {name: layer_grid_distance(layer) for name, layer in _weight_quantized(model).items()}
    finite = [v for v in per_layer.values() if math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else float("nan")
    return mean, per_layer
