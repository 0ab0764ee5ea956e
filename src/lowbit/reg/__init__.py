"""Regularizers: loss terms on top of ``lowbit.quant`` (METHODS.md sections 2 and 3).

- :mod:`lowbit.reg.sinreq`: SinReQ (Elthakeb et al., "SinReQ: Generalized Sinusoidal
  Regularization for Low-Bitwidth Deep Quantized Training"), METHODS.md section 2;
- :mod:`lowbit.reg.waveq`: SINAREQ / WaveQ, learned per-layer bits and scale through the
  sinusoid's period, METHODS.md section 3; :mod:`lowbit.reg.waveq_method` runs it end to end;
- :mod:`lowbit.reg.schedules`: λ schedules over training progress (constant, warm-up, and the
  three-phase schedule of SINAREQ/WaveQ, METHODS.md section 3).
"""

from lowbit.reg.sinreq import SinReQ, grid_distance
from lowbit.reg.waveq import WaveQ, WaveQConfig
from lowbit.reg.waveq_method import WaveQOutcome, waveq_quantize

__all__ = ["SinReQ", "WaveQ", "WaveQConfig", "WaveQOutcome", "grid_distance", "waveq_quantize"]
