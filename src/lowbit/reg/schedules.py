"""λ schedules over training progress ``t`` in [0, 1], usable as ``LossTerm.weight``.

Paper: Elthakeb et al., "SinReQ: Generalized Sinusoidal Regularization for Low-Bitwidth Deep
Quantized Training" (the released code used a constant λ) and "WaveQ / SINAREQ: Gradient-Based
Deep Quantization of Neural Networks through Sinusoidal Adaptive Regularization" (the three-phase
schedule). METHODS.md sections 2 and 3.

- ``constant(value)``: λ(t) = value.
- ``warmup(value, end, shape)``: 0 at t = 0, ``value`` for t >= end; ``linear`` ramps as
  ``value * t / end``; ``tanh`` ramps as ``value * g(t / end)`` with
  ``g(x) = (tanh(a (2x - 1)) + tanh(a)) / (2 tanh(a))``, a = 3 (a smooth S-curve with g(0) = 0,
  g(1/2) = 1/2, g(1) = 1). This tanh shape is our choice: the papers do not specify one.
- Three-phase (METHODS.md section 3, the WaveQ paper's schedule over T steps with
  ``f(t, c) = (1 + tanh((t - c)/s))/2``, ``s = T/50``), written over progress t = step/T, so
  ``s = 1/50``:

      three_phase_weight(value)(t) = value * f(t, 0.2)                  (λ_w)
      three_phase_bits(c_β)(t)     = c_β * (f(t, 0.2) - f(t, 0.8))      (λ_β)

Every schedule is a small frozen dataclass (picklable, with a readable ``repr`` for run records).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lowbit.errors import ConfigError, did_you_mean

THREE_PHASE_SHARPNESS = 1.0 / 50.0  # s = T/50, in units of progress
WARMUP_SHAPES = ("linear", "tanh")
_TANH_A = 3.0


def _progress(t: float) -> float:
    t = float(t)
    if math.isnan(t):
        raise ConfigError("schedule progress must be a number in [0, 1], got nan")
    return min(max(t, 0.0), 1.0)


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    return value


def phase(t: float, center: float, sharpness: float = THREE_PHASE_SHARPNESS) -> float:
    """f(t, c) = (1 + tanh((t - c) / s)) / 2: a smooth step from 0 to 1 centred at ``center``."""
    return 0.5 * (1.0 + math.tanh((float(t) - center) / sharpness))


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, t: float) -> float:
        return self.value


@dataclass(frozen=True)
class Warmup:
    value: float
    end: float = 0.2
    shape: str = "linear"

    def __call__(self, t: float) -> float:
        t = _progress(t)
        if self.end <= 0.0 or t >= self.end:
            return self.value
        x = t / self.end
        if self.shape == "linear":
            return self.value * x
        g = (math.tanh(_TANH_A * (2.0 * x - 1.0)) + math.tanh(_TANH_A)) / (2.0 * math.tanh(_TANH_A))
        return self.value * g


@dataclass(frozen=True)
class ThreePhaseWeight:
    """λ_w(t) = value * f(t, 0.2)."""

    value: float
    sharpness: float = THREE_PHASE_SHARPNESS

    def __call__(self, t: float) -> float:
        return self.value * phase(_progress(t), 0.2, self.sharpness)


@dataclass(frozen=True)
class ThreePhaseBits:
    """λ_β(t) = c_β * (f(t, 0.2) - f(t, 0.8))."""

    c_beta: float
    sharpness: float = THREE_PHASE_SHARPNESS

    def __call__(self, t: float) -> float:
        t = _progress(t)
        return self.c_beta * (phase(t, 0.2, self.sharpness) - phase(t, 0.8, self.sharpness))


def constant(value: float) -> Constant:
    """λ(t) = value (what the SinReQ released code did)."""
    return Constant(_finite("schedule value", value))


def warmup(value: float, end: float = 0.2, shape: str = "linear") -> Warmup:
    """0 at t = 0, ramping (``linear`` or ``tanh``) to ``value`` at t = ``end``, then constant."""
    if shape not in WARMUP_SHAPES:
        raise ConfigError(f"unknown warm-up shape {shape!r}{did_you_mean(shape, WARMUP_SHAPES)}; "
                          f"choose one of: {', '.join(WARMUP_SHAPES)}")
    end = _finite("warm-up end", end)
    if not 0.0 <= end <= 1.0:
        raise ConfigError(f"warm-up end must be a progress in [0, 1], got {end}")
    return Warmup(_finite("schedule value", value), end, shape)


def three_phase_weight(value: float) -> ThreePhaseWeight:
    """λ_w of the three-phase schedule: ``value * f(t, 0.2)`` (METHODS.md section 3)."""
    return ThreePhaseWeight(_finite("schedule value", value))


def three_phase_bits(c_beta: float) -> ThreePhaseBits:
    """λ_β of the three-phase schedule: ``c_β (f(t, 0.2) - f(t, 0.8))`` (METHODS.md section 3)."""
    return ThreePhaseBits(_finite("c_beta", c_beta))


SCHEDULES: dict[str, Callable[[float], Callable[[float], float]]] = {
    "constant": constant,
    "warmup": warmup,
    "three-phase": three_phase_weight,
}


def make_schedule(name: str, value: float) -> Callable[[float], float]:
    """A λ schedule by name: ``constant``, ``warmup`` (linear, end 0.2) or ``three-phase`` (λ_w)."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}{did_you_mean(str(name), SCHEDULES)}; "
                          f"choose one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](value)
