"""Non-finite weights (README "Quantizers"): every weight quantizer against its reference formula.

The reference is each paper's formula written out here, independently of ``lowbit.quant``, and
evaluated on the finite entries only: statistics (max, mean, scales, LSQ's initial step) skip
the non-finite weights, the outputs at the finite entries are the reference's, NaN stays NaN and
+inf/-inf give the top/bottom level; the gradient is zero at the non-finite entries, and the
gradients at the finite entries and to a learned scale/step are the reference's (autograd through
the reference formula with the straight-through estimator; LSQ's step gradient also in the
paper's closed form).
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant import DoReFaWeight, LSQWeight, PACTWeight, TernaryWeight, WRPNWeight
from lowbit.quant.base import SCALE_MODES

NAN, INF = float("nan"), float("inf")
BITS = (1, 2, 3, 4, 8)
WEIGHT_CLASSES = (DoReFaWeight, PACTWeight, WRPNWeight, LSQWeight, TernaryWeight)
CASES = [
    pytest.param(c, k, s, id=f"{c.family}-k{k}-{s}")
    for c in WEIGHT_CLASSES for k in BITS if k in c.supported_bits
    for s in (SCALE_MODES if c.uses_output_scale else ("none",))
]
# where the non-finite values go in the 5 x 8 test weight
PLACES = {"nan": [((1, 3), NAN)], "+inf": [((0, 0), INF)], "-inf": [((2, 5), -INF)],
          "all": [((1, 3), NAN), ((0, 0), INF), ((2, 5), -INF)]}


# ---- the reference formulas (finite entries only) ------------------------------------------------

def _ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward exactly y (y + 0), gradient straight to x."""
    return y.detach() + (x - x.detach())


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def reference(cls, k: int, scale: str, wf: torch.Tensor, param: torch.Tensor | None, numel: int):
    """(outputs at the finite entries wf, top value, bottom value) of the paper's formula.

    ``param`` is the learned scale (``scale='learned'``) or LSQ's step; ``numel`` the layer's size
    (LSQ's gradient scale g = 1/sqrt(N Q_P) uses the layer's N).
    """
    if cls is LSQWeight:
        q_n, q_p = 2 ** (k - 1), 2 ** (k - 1) - 1
        g = 1.0 / math.sqrt(numel * q_p)
        step = param.abs().clamp_min(1e-8)
        s = step.detach() + (step * g - (step * g).detach())  # forward s, gradient times g
        v = torch.clamp(wf / s, -q_n, q_p)
        return _ste(v, torch.round(v)) * s, q_p * step.detach(), -q_n * step.detach()
    if cls is TernaryWeight:
        a_abs = wf.detach().abs()
        if k == 1:
            a = a_abs.mean().clamp_min(1e-12)
            return _ste(wf, a * _sign(wf.detach())), a, -a
        if k == 2:
            t = 0.7 * a_abs.mean()
            a = a_abs[a_abs > t].mean().clamp_min(1e-12) if bool((a_abs > t).any()) else torch.tensor(1e-12)
            return _ste(wf, a * torch.sign(wf.detach()) * (a_abs > t)), a, -a
        a = a_abs.amax().clamp_min(1e-12)
        n = 2 ** (k - 1) - 1
        u = torch.clamp(wf / a, -1.0, 1.0) * n
        return a * _ste(u, torch.round(u)) / n, a, -a
    if scale == "none":
        s = 1.0
    elif scale == "max":
        s = wf.detach().abs().amax().clamp_min(1e-8)
    else:
        s = param.abs().clamp_min(1e-8)
    top = s.detach() if isinstance(s, torch.Tensor) else torch.tensor(s)
    if cls is WRPNWeight:
        u = torch.clamp(wf / s, -1.0, 1.0)
        if k == 1:
            return s * _ste(u, _sign(u)), top, -top
        n = 2 ** (k - 1) - 1
        return s * _ste(u * n, torch.round(u * n)) / n, top * n / n, -top * n / n
    v = wf / s  # DoReFa (and PACT's weights)
    if k == 1:
        e = v.detach().abs().mean().clamp_min(1e-12)
        u = v / e
        return s * e * _ste(u, _sign(u)), top * e, -top * e
    n = 2**k - 1
    t = torch.tanh(v)
    u = t / t.abs().amax().clamp_min(1e-12)  # max|tanh(v)| over the finite weights only
    x = (u + 1.0) / 2.0 * n
    return s * (2.0 * _ste(x, torch.round(x)) / n - 1.0), top, -top


def _param(q) -> torch.Tensor | None:
    if isinstance(q, LSQWeight):
        return q.step
    return q.scale if getattr(q, "scale_mode", "none") == "learned" else None


def check_against_reference(cls, k: int, scale: str, w: torch.Tensor, grad_out: torch.Tensor,
                            perturb: float = 1.0) -> None:
    finite = torch.isfinite(w)
    q = cls(k, w, layer="features.3", scale=scale)
    with torch.no_grad():
        if _param(q) is not None:
            _param(q).mul_(perturb)

    # the library
    x = w.clone().requires_grad_()
    out = q(x)
    out.backward(grad_out)
    param = _param(q)

    # the reference on the finite entries
    wf = w[finite].clone().requires_grad_()
    ref_param = None if param is None else param.detach().clone().requires_grad_()
    ref_out, top, bottom = reference(cls, k, scale, wf, ref_param, w.numel())
    ref_out.backward(grad_out[finite])

    out = out.detach()
    assert out.shape == w.shape and out.dtype == w.dtype
    torch.testing.assert_close(out[finite], ref_out.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(torch.isnan(out), torch.isnan(w)), "NaN stays NaN, and only NaN gives NaN"
    torch.testing.assert_close(out[w == INF], top.expand(int((w == INF).sum())), rtol=1e-6, atol=0)
    torch.testing.assert_close(out[w == -INF], bottom.expand(int((w == -INF).sum())), rtol=1e-6, atol=0)

    assert torch.isfinite(x.grad).all()
    assert (x.grad[~finite] == 0).all(), "no gradient at a non-finite weight"
    torch.testing.assert_close(x.grad[finite], wf.grad, rtol=1e-5, atol=1e-6)
    if param is not None:
        assert torch.isfinite(param.grad).all()
        torch.testing.assert_close(param.grad, ref_param.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("which", PLACES)
@pytest.mark.parametrize("cls,k,scale", CASES)
def test_nonfinite_weights_match_the_reference_on_the_finite_entries(cls, k, scale, which):
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(5, 8, generator=gen) * 0.4
    for (i, j), value in PLACES[which]:
        w[i, j] = value
    grad_out = torch.randn(5, 8, generator=gen)  # finite at the non-finite entries too
    check_against_reference(cls, k, scale, w, grad_out, perturb=0.7)


@pytest.mark.parametrize("cls,k,scale", CASES)
def test_statistics_at_construction_skip_nonfinite_weights(cls, k, scale):
    gen = torch.Generator().manual_seed(12)
    w = torch.randn(5, 8, generator=gen) * 0.4
    bad = w.clone()
    for (i, j), value in PLACES["all"]:
        bad[i, j] = value
    finite = torch.isfinite(bad)
    q_bad, q_ref = cls(k, bad, scale=scale), cls(k, bad[finite], scale=scale)
    for (name, p), (_, p_ref) in zip(q_bad.named_parameters(), q_ref.named_parameters()):
        assert torch.isfinite(p).all(), name
        torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=0)
    if cls is LSQWeight:  # 2 mean|w| / sqrt(Q_P) over the finite weights
        expect = 2 * bad[finite].abs().mean() / math.sqrt(2 ** (k - 1) - 1)
        assert q_bad.step.item() == pytest.approx(expect.item(), rel=1e-6)
    if scale == "learned":  # max|w| over the finite weights
        assert q_bad.scale.item() == pytest.approx(bad[finite].abs().max().item(), rel=1e-7)
    # u(w): the finite entries are those of the finite weights alone
    torch.testing.assert_close(q_bad.normalize(bad)[finite], q_bad.normalize(bad[finite]), rtol=1e-6, atol=1e-7)
    assert torch.equal(torch.isnan(q_bad.normalize(bad)), torch.isnan(bad))


@pytest.mark.parametrize("k", [2, 3, 4, 8])
@pytest.mark.parametrize("cls", [DoReFaWeight, PACTWeight])
def test_dorefa_infinity_no_longer_enters_max_tanh(cls, k):
    """tanh(+inf) = 1 is finite: it used to set max|tanh| = 1 and move every other output."""
    w = torch.tensor([0.1, -0.2, 0.3, 0.05])
    with_inf = torch.cat([w, torch.tensor([INF, -INF])])
    q = cls(k, w)
    out = q(with_inf).detach()
    assert torch.equal(out[:4], q(w).detach())
    assert out[4].item() == 1.0 and out[5].item() == -1.0
    u = q.normalize(with_inf)
    assert torch.equal(u[:4], q.normalize(w)) and u[4].item() == 1.0 and u[5].item() == -1.0


@pytest.mark.parametrize("scale", SCALE_MODES)
@pytest.mark.parametrize("k", [2, 3, 8])
def test_dorefa_normalize_skips_nonfinite_weights(k, scale):
    """u(w) = tanh(v) / max|tanh(v)| over the finite weights (what SinReQ aligns); NaN stays NaN,
    +-inf gives +-1; the gradient is zero at the non-finite weights and the reference's elsewhere."""
    gen = torch.Generator().manual_seed(13)
    w = torch.randn(4, 6, generator=gen) * 0.4
    w[0, 0], w[1, 1], w[2, 2] = NAN, INF, -INF
    finite = torch.isfinite(w)
    q = DoReFaWeight(k, w, scale=scale)
    x = w.clone().requires_grad_()
    u = q.normalize(x)
    g = torch.randn(4, 6, generator=gen)
    u.backward(g)

    wf = w[finite].clone().requires_grad_()
    p = q.scale.detach().clone().requires_grad_() if scale == "learned" else None
    s = 1.0 if scale == "none" else wf.detach().abs().amax() if scale == "max" else p.abs().clamp_min(1e-8)
    t = torch.tanh(wf / s)
    ref = t / t.abs().amax()
    ref.backward(g[finite])

    u = u.detach()
    torch.testing.assert_close(u[finite], ref.detach(), rtol=1e-6, atol=1e-7)
    assert math.isnan(u[0, 0].item()) and u[1, 1].item() == 1.0 and u[2, 2].item() == -1.0
    assert (x.grad[~finite] == 0).all()
    torch.testing.assert_close(x.grad[finite], wf.grad, rtol=1e-5, atol=1e-6)
    if p is not None:
        torch.testing.assert_close(q.scale.grad, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 8])
def test_dorefa_weight_gradient_closed_form(k):
    """scale none: dL/dw_i = (1 - t_i^2) (g_i / m - [i = argmax|t|] sign(t_i) sum_j g_j t_j / m^2),
    t = tanh(w), m = max|t| over the finite w (the STE passes d w_q / d u = 1)."""
    w = torch.tensor([0.3, NAN, -0.9, 0.1, INF, 0.5, -INF], dtype=torch.float32)
    g = torch.tensor([0.5, 7.0, -1.0, 2.0, 3.0, 0.25, -4.0])
    x = w.clone().requires_grad_()
    DoReFaWeight(k, w)(x).backward(g)
    finite = torch.isfinite(w)
    t = torch.tanh(w[finite].double())
    gf = g[finite].double()
    m = t.abs().max()
    expect = gf / m
    top = t.abs().argmax()
    expect[top] -= torch.sign(t[top]) * (gf * t).sum() / m**2
    expect *= 1 - t**2
    assert (x.grad[~finite] == 0).all()
    torch.testing.assert_close(x.grad[finite].double(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_lsq_step_gradient_closed_form(k):
    """LSQ eq. 3: dw_q/ds = round(v) - v inside [-Q_N, Q_P], -Q_N / Q_P outside, times
    g = 1/sqrt(N Q_P); the non-finite weights add nothing."""
    w = torch.tensor([0.3, NAN, -0.9, 0.1, INF, 0.5, -INF, 2.5, -3.0])
    grad_out = torch.tensor([0.5, 7.0, -1.0, 2.0, 3.0, 0.25, -4.0, 1.5, -0.5])
    q = LSQWeight(k, w)
    with torch.no_grad():
        q.step.fill_(0.2)
    x = w.clone().requires_grad_()
    q(x).backward(grad_out)
    q_n, q_p = 2 ** (k - 1), 2 ** (k - 1) - 1
    finite = torch.isfinite(w)
    v = (w[finite] / q.step.detach()).double()  # as the quantizer divides, in float32
    inside = (v >= -q_n) & (v <= q_p)
    d = torch.where(inside, torch.round(v) - v, v.clamp(-q_n, q_p))
    expect = (grad_out[finite].double() * d).sum() / math.sqrt(w.numel() * q_p)
    assert q.step.grad.item() == pytest.approx(expect.item(), rel=1e-5, abs=1e-7)
    assert torch.equal(x.grad[finite], torch.where(inside, grad_out[finite], 0.0))
    assert (x.grad[~finite] == 0).all()


@pytest.mark.parametrize("cls,k,scale", CASES)
def test_all_nonfinite_weight(cls, k, scale):
    """No finite entry at all: documented values, zero gradients, nothing NaN but the NaN."""
    w = torch.tensor([NAN, INF, -INF])
    q = cls(k, w, scale=scale)
    x = w.clone().requires_grad_()
    out = q(x)
    out.backward(torch.ones(3))
    assert math.isnan(out[0].item()) and out[1].item() > 0 > out[2].item()
    assert torch.equal(x.grad, torch.zeros(3))
    for p in q.parameters():
        assert torch.equal(p.grad, torch.zeros_like(p))


# ---- property: random shapes, values and non-finite positions -------------------------------------

FINITE = st.one_of(st.floats(-3.0, 3.0, width=32), st.sampled_from([0.0, -0.0, 1e-3, -50.0, 200.0]))
KINDS = st.sampled_from([NAN, INF, -INF])


@st.composite
def weights_with_nonfinite(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    w = draw(hnp.arrays(np.float32, shape, elements=FINITE))
    flat = w.reshape(-1)
    count = draw(st.integers(1, max(1, flat.size - 1)))
    where = draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=count, unique=True))
    for i in where:
        flat[i] = draw(KINDS)
    return torch.from_numpy(w.copy())


@settings(max_examples=120, deadline=None)
@given(w=weights_with_nonfinite(), case=st.sampled_from([c.values for c in CASES]),
       perturb=st.floats(0.25, 2.0), seed=st.integers(0, 2**16))
def test_property_nonfinite_weights_match_the_reference(w, case, perturb, seed):
    cls, k, scale = case
    if not bool(torch.isfinite(w).any()):  # covered by test_all_nonfinite_weight
        return
    grad_out = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed))
    check_against_reference(cls, k, scale, w, grad_out, perturb)
