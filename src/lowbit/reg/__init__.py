"""Regularizers: loss terms on top of ``lowbit.quant`` (METHODS.md sections 2 and 3).

- :mod:`lowbit.reg.sinreq`: SinReQ (Elthakeb et al., "SinReQ: Generalized Sinusoidal
  Regularization for Low-Bitwidth Deep Quantized Training"), METHODS.md section 2;
- :mod:`lowbit.reg.schedules`: λ schedules over training progress (constant, warm-up, and the
  three-phase schedule of SINAREQ/WaveQ, METHODS.md section 3).
"""
