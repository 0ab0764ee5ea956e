"""Integer requantization that reproduces the fake-quant model's codes on ONNX Runtime (issue 17).

A QLinearConv/QGemm writing the next layer's uint8 codes computes ``round(ratio' * (acc + B))``
with an int32 bias ``B`` and ONNX Runtime's float32 multiplier ``ratio' = x_scale * w_scale /
y_scale``; the fake-quant model computes ``round(ratio * (acc + beta))`` with the folded float bias
``beta``. :func:`fit_requantization` chooses, per output channel, ``B``, the float32 weight scale
and an int8 code multiplier ``K`` together so that every code boundary falls in the same gap of
the accumulator lattice ``K * Z`` in both (details in its docstring); :func:`fit_channel` is the
search for one channel and multiplier.
"""

from __future__ import annotations

import numpy as np

from lowbit.export.bn_fold import AVX2_PAIR_LIMIT, INT8_RANGE, FoldedLayer
from lowbit.export.onnx_graph import f32

INT8_MAX = INT8_RANGE[1]

def ort_ratio(x_scale: float, w_scale: np.ndarray, y_scale: float) -> np.ndarray:
    """ONNX Runtime's requantization multiplier ``x_scale * w_scale / y_scale``, computed in float32 as it does."""
    return (f32(x_scale) * w_scale.astype(np.float32) / f32(y_scale)).astype(np.float64)


def fit_requantization(folded: FoldedLayer, top: int, x_scale: float, y_scale: float, act_max: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 weights, int32 bias ``B``, float32 weight scale) that give the fake-quant model's output codes.

    Per output channel, the fake-quant code is ``clamp(round(ratio * (acc + beta)), 0, top)`` for accumulators
    ``acc`` that are multiples of the channel's code multiplier ``K`` (its int8 row holds ``K * m``); ORT computes
    ``round(ratio' * (acc + B))`` with an integer ``B`` and its float32 multiplier ``ratio'``. Rounding ``beta``
    alone moves the code boundaries by up to half a unit, ``1 / (2 K)`` of the lattice gap, and flips codes. They
    agree for every accumulator exactly when each boundary ``T_k = (k + 0.5) / ratio - beta`` (``k < top``) and
    its counterpart ``(k + 0.5) / ratio' - B`` lie in the same gap of ``K * Z``: linear in ``(B, 1 / ratio')``.
    :func:`fit_channel` searches both; where no pair fits, another ``K`` (another lattice) is tried: from the
    largest the channel's own ``max |m_j|`` allows in int8 (and x86 AVX2's u8 x s8 pair sums, ``act_max`` being
    the largest input code) down to half the layer's; at worst the pair misplacing the fewest boundaries is kept,
    those of high (rare) codes preferred (ResNet-20 w4a4 trained on digits: 335 of 336 channels fit exactly)."""
    m = folded.codes.astype(np.int64) // folded.multiplier
    codes, scale = folded.codes.copy(), folded.scale.copy()
    bias = np.zeros(len(scale))
    w_scale = scale.astype(np.float32)
    for j in range(len(scale)):
        best = None
        peak = max(1, int(np.abs(m[j]).max()))
        largest = max(folded.multiplier, min(INT8_MAX // peak, AVX2_PAIR_LIMIT // (2 * act_max * peak)))
        for step in list(range(largest, max(1, folded.multiplier // 2) - 1, -1))[:8]:
            s = folded.scale[j] * folded.multiplier / step  # the channel's weight scale with multiplier ``step``
            unit = x_scale * s
            fit = fit_channel(folded.bias[j] / unit, unit / y_scale, top, step, x_scale, y_scale)
            if best is None or fit[0] < best[0][0]:
                best = (fit, step)
            if fit[0] == 0:
                break
        (_, bias[j], w_scale[j]), step = best
        codes[j] = (m[j] * step).astype(np.int8)
    return codes, bias, w_scale


def fit_channel(beta: float, ratio: float, top: int, step: int, x_scale: float, y_scale: float
                 ) -> tuple[float, float, np.float32]:
    """(cost, ``B``, float32 weight scale) of one channel (see :func:`fit_requantization`); cost 0: every code equal."""
    half = np.arange(top) + 0.5
    weight = 1.0 / (1.0 + np.arange(top)) ** 2  # a misplaced boundary's cost: low codes are the common ones
    # (ReLU outputs); a boundary within eps of a lattice point counts as misplaced
    gap = np.floor((half / ratio - beta) / step)  # the lattice gap (step * gap, step * (gap + 1)) of each boundary
    eps = 1e-4 + 4e-7 * (top + 1) / abs(ratio)  # units: room for ORT's float32 product error (2**-24 relative)

    def cost(t: np.ndarray) -> np.ndarray:  # t (..., top): boundaries in accumulator units
        rem = np.mod(t, step)
        near = ((rem < eps) | (rem > step - eps)).any(-1)
        return (weight * np.abs(np.floor(t / step) - gap)).sum(-1) + weight.sum() * near

    nearest = (float(cost(half / ratio - np.round(beta))), float(np.round(beta)), np.float32(ratio * y_scale / x_scale))
    if eps >= step / 4:  # a lattice gap is within float32 noise of the output: nothing to fit
        return nearest
    # |B - beta| < 2 step suffices: boundaries 0 and 1 each move by less than a gap
    cand = np.round(beta) + np.array(sorted(range(-2 * step, 2 * step + 1), key=abs), np.float64)[:, None]
    lo = np.max((step * gap + eps + cand) / half, 1)  # the interval of 1 / ratio' keeping every boundary in its gap
    hi = np.min((step * gap + step - eps + cand) / half, 1)
    for i in np.nonzero(lo < hi)[0]:
        ws = np.float32(y_scale / (x_scale * (lo[i] + hi[i]) / 2))
        if cost(half / ort_ratio(x_scale, np.array([ws]), y_scale)[0] - cand[i, 0]) == 0:  # with ORT's multiplier
            return 0.0, float(cand[i, 0]), ws
    if top > 15:  # no exact fit: the cheapest misfit is searched below 5 bits only (its cost grows with top**2)
        return nearest
    ends = np.sort(np.concatenate([(step * gap + cand) / half, (step * (gap + 1) + cand) / half], 1), 1)
    inv = np.concatenate([(ends[:, 1:] + ends[:, :-1]) / 2, ends[:, [0, -1]] * (1 + 1e-9 * np.array([-1, 1]))], 1)
    c = cost(half * inv[:, :, None] - cand[:, :, None])  # (B candidates, 1 / ratio' candidates)
    best = nearest
    for i in np.lexsort((np.arange(len(cand)), c.min(1)))[:8]:  # cheapest first, nearest beta among equals
        ws = np.float32(y_scale / (x_scale * inv[i, np.argmin(c[i])]))
        real = float(cost(half / ort_ratio(x_scale, np.array([ws]), y_scale)[0] - cand[i, 0]))
        if real < best[0]:
            best = (real, float(cand[i, 0]), ws)
    return best
