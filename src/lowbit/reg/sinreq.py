"""SinReQ: sinusoidal regularization towards the quantizer's levels at fixed target bitwidths.

Paper: Elthakeb, Pilligundla, Esmaeilzadeh, "SinReQ: Generalized Sinusoidal Regularization for
Low-Bitwidth Deep Quantized Training" (METHODS.md section 2). Per quantized layer l with target
bits k_l (the layer's weight bits), with the quantizer's normalized domain u(w), spacing Δ(k) and
offset o(k) (``lowbit.quant.base``):

    R_l = mean_i sin^2( π (u(w_i) - o(k_l)) / Δ(k_l) )              (the SinReQ penalty)
    L   = L_task + λ(t) Σ_l m_l R_l                                 (m_l: optional per-layer λ)

R_l is zero exactly on every level o + mΔ, equals 1 at the midpoints, and has period Δ.

Domains: ``aligned`` (default) uses u = weight_quantizer.normalize(w), so the minima sit exactly
on the quantizer's levels; ``raw`` puts the raw float weight w in place of u with the same Δ and o
(the authors' released code, which for DoReFa only approximately matches the tanh-space levels).

Implementation note: the phase x = (u - o)/Δ is reduced to x - round(x) before the sine
(sin^2 has period π, and round carries no gradient), so the value and gradient are the same but
stay accurate for large |x| (LSQ's u = w/s reaches 2^(k-1)).

Only the "on top of quantized training" mode is built here (the model has been through
``quantize_``); the float pre-quantization phase is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from lowbit.errors import ConfigError, did_you_mean
from lowbit.nn.convert import quantized_layers
from lowbit.nn.modules import QuantLayer
from lowbit.quant.base import Quantizer
from lowbit.train.loop import LossTerm

DOMAINS = ("aligned", "raw")


def sin2_grid(u: torch.Tensor, spacing: float | torch.Tensor, offset: float | torch.Tensor) -> torch.Tensor:
    """Elementwise sin^2(π (u - offset) / spacing): 0 on the grid offset + mΔ, 1 halfway between.

    Computed as (1 - cos(2π (u - o) / Δ)) / 2, the same function with one transcendental op and
    no power (measured ~25% faster than sin(.)**2 on CPU); float32 keeps it below 1e-9 of zero on
    the levels for |u - o| / Δ up to a few hundred (LSQ's 8-bit range).
    """
    return 0.5 - 0.5 * torch.cos((u - offset) * (2.0 * math.pi / spacing))


def sinreq_penalty(u: torch.Tensor, k: int | float | torch.Tensor, quantizer_cls: type[Quantizer]) -> torch.Tensor:
    """mean sin^2(π (u - o(k)) / Δ(k)) with the spacing and offset of ``quantizer_cls`` (k may be a tensor)."""
    values = sin2_grid(u, quantizer_cls.spacing(k), quantizer_cls.offset(k))
    if values.numel() == 0:
        return values.new_zeros(())
    return values.mean()


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown SinReQ domain {domain!r}{did_you_mean(str(domain), DOMAINS)}; "
                          f"choose one of: {', '.join(DOMAINS)}")
    return domain


def layer_penalty(layer: QuantLayer, domain: str = "aligned") -> torch.Tensor:
    """R_l of one quantized layer at its weight bits, in the ``aligned`` (u(w)) or ``raw`` (w) domain."""
    _check_domain(domain)
    quantizer = layer.weight_quantizer
    if quantizer is None:
        name = getattr(layer, "layer_name", "?")
        raise ConfigError(f"layer {name!r} has float weights: SinReQ needs a weight quantizer")
    u = quantizer.normalize(layer.weight) if domain == "aligned" else layer.weight
    return sinreq_penalty(u, quantizer.bits, type(quantizer))


def _weight_quantized(model: nn.Module) -> dict[str, QuantLayer]:
    return {name: m for name, m in quantized_layers(model).items() if m.weight_quantizer is not None}


class SinReQ:
    """The SinReQ loss term: ``model -> Σ_l m_l R_l`` over the layers with a weight quantizer.

    ``multipliers`` maps layer names to per-layer λ factors (default 1.0 for the others); a name
    that is not a weight-quantized layer of ``model`` raises ``ConfigError``.
    """

    name = "sinreq"

    def __init__(self, model: nn.Module, domain: str = "aligned",
                 multipliers: Mapping[str, float] | None = None) -> None:
        self.domain = _check_domain(domain)
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
        terms = [self.multipliers.get(name, 1.0) * layer_penalty(layer, self.domain)
                 for name, layer in self._layers.items()]
        if not terms:
            ref = next(model.parameters(), None)
            return torch.zeros((), device=ref.device if ref is not None else "cpu")
        return torch.stack(terms).sum()

    def as_loss_term(self, schedule: Callable[[float], float] | float = 1.0) -> LossTerm:
        """``LossTerm("sinreq", self, schedule)``: schedule is a λ or a callable of progress."""
        return LossTerm(self.name, self, schedule)

    def __repr__(self) -> str:
        return f"SinReQ(domain={self.domain!r}, multipliers={self.multipliers!r})"


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
