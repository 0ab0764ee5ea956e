"""Weight quantizers (METHODS.md section 1): levels, geometry, idempotence, STE, ties, NaN/inf.

Every property runs for every family and every k the family supports; the families with an
output scale (DoReFa, WRPN, PACT) also run for every scale mode.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import BitwidthError, ConfigError
from lowbit.quant import DoReFaWeight, LSQWeight, PACTWeight, TernaryWeight, WRPNWeight
from lowbit.quant.base import SCALE_MODES

WEIGHT_CLASSES = (DoReFaWeight, WRPNWeight, PACTWeight, LSQWeight, TernaryWeight)
CLASS_K = [pytest.param(c, k, id=f"{c.family}-k{k}") for c in WEIGHT_CLASSES for k in c.supported_bits]
CLASS_K_SCALE = [
    pytest.param(c, k, s, id=f"{c.family}-k{k}-{s}")
    for c in WEIGHT_CLASSES for k in c.supported_bits
    for s in (SCALE_MODES if c.uses_output_scale else ("none",))
]
DOREFA_LIKE = (DoReFaWeight, PACTWeight)

# Finite float32 values: mostly moderate, sometimes huge or subnormal (hypothesis also draws
# 0, -0.0 and the smallest subnormals from the wide range).
FINITE = st.one_of(
    st.floats(-3.0, 3.0, width=32),
    st.floats(-(2.0**100), 2.0**100, width=32, allow_subnormal=True),
    st.floats(-(2.0**-123), 2.0**-123, width=32, allow_subnormal=True),
)
WEIGHTS = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6), elements=FINITE)


def _finite_mean_abs(v: torch.Tensor) -> torch.Tensor:
    v = v[torch.isfinite(v)]
    return v.abs().mean() if v.numel() else torch.zeros(())


def value_scale(q, w: torch.Tensor) -> torch.Tensor:
    """The factor that maps levels(k) to output values: output = value_scale * level."""
    w = w.detach()
    if isinstance(q, LSQWeight):
        return q.step.detach().abs().clamp_min(1e-8)
    if isinstance(q, TernaryWeight):
        return q.level_scale(w)
    s = torch.as_tensor(q.output_scale(w)).detach()
    if isinstance(q, DOREFA_LIKE) and q.bits == 1:  # sign(w) * E, E = mean|w / s| (finite entries)
        return s * _finite_mean_abs(w / s).clamp_min(1e-12)
    return s


def assert_on_levels(values: torch.Tensor, levels: torch.Tensor, what: str = "") -> torch.Tensor:
    """Every value is a level (atol 1e-6, relative for the integer levels of LSQ); returns indices."""
    if values.numel() == 0:
        return values.long()
    dist = (values.reshape(-1, 1).double() - levels.double().reshape(1, -1)).abs()
    idx = dist.argmin(dim=1)  # (Tensor.min(dim) is slow on small tensors with threads)
    best = dist.gather(1, idx.reshape(-1, 1)).reshape(-1)
    tol = 1e-6 * levels.double()[idx].abs().clamp_min(1.0)
    bad = best > tol
    assert not bad.any(), f"{what} off-level values {values.reshape(-1)[bad][:5].tolist()} (levels {levels.tolist()})"
    return idx


def quantizer(cls, k: int, w: torch.Tensor, scale: str = "none"):
    return cls(k, w, layer="features.3", scale=scale)


# ---- geometry of the level sets -------------------------------------------------------------

@pytest.mark.parametrize("cls,k", CLASS_K)
def test_levels_are_offset_plus_integer_spacings(cls, k):
    levels = cls.levels(k).double()
    expected_count = {DoReFaWeight: 2**k, PACTWeight: 2**k, LSQWeight: 2**k,
                      WRPNWeight: 2 if k == 1 else 2**k - 1,
                      TernaryWeight: 2 if k == 1 else 2**k - 1}[cls]
    assert levels.numel() == expected_count <= 2**k
    spacing, offset = float(cls.spacing(k)), float(cls.offset(k))
    assert spacing > 0
    torch.testing.assert_close(levels.diff(), torch.full((levels.numel() - 1,), spacing, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    m = ((levels - offset) / spacing).round()  # levels are float32: compare in level space
    torch.testing.assert_close(levels, offset + m * spacing, atol=1e-6, rtol=0)
    if cls is not LSQWeight:  # unit-range families: symmetric, ending at +-1
        assert levels[0].item() == pytest.approx(-1.0) and levels[-1].item() == pytest.approx(1.0)
    else:
        assert levels[0].item() == -(2 ** (k - 1)) and levels[-1].item() == 2 ** (k - 1) - 1


@pytest.mark.parametrize("cls,k", [p for p in CLASS_K if p.values[1] >= 2])
def test_spacing_offset_accept_a_float_tensor_bitwidth(cls, k):
    """WaveQ evaluates Δ and o at a continuous bitwidth: a float tensor k gives the int-k values."""
    kt = torch.tensor(float(k))
    assert float(cls.spacing(kt)) == pytest.approx(float(cls.spacing(k)), rel=1e-6)
    assert float(cls.offset(kt)) == pytest.approx(float(cls.offset(k)), abs=1e-7)


# ---- the main property: outputs are levels, at most 2^k values, nearest level, idempotent ------

@pytest.mark.parametrize("cls,k", CLASS_K)
@given(w_np=WEIGHTS, scale_index=st.integers(0, 2), perturb=st.floats(0.25, 2.0))
def test_weight_outputs_are_levels(cls, k, w_np, scale_index, perturb):
    """(The scale mode is drawn, not parametrized, to keep the suite fast.)"""
    w = torch.from_numpy(w_np)
    scale = SCALE_MODES[scale_index] if cls.uses_output_scale else "none"
    q = quantizer(cls, k, w, scale)
    with torch.no_grad():
        if scale == "learned":  # a learned scale away from max|w| exercises the clip range
            q.scale.mul_(perturb)
        if cls is LSQWeight:
            q.step.mul_(perturb)
    out = q(w).detach()
    assert out.shape == w.shape and out.dtype == w.dtype
    assert torch.isfinite(out).all()
    assert torch.unique(out).numel() <= 2**k

    s = value_scale(q, w)
    levels = cls.levels(k)
    chosen = assert_on_levels(out / s, levels, f"{cls.family} k={k} scale={scale}")

    # the output is a nearest level of the normalized weight u(w) (ties either way); TWN's ternary
    # step uses its 0.7 mean|w| threshold instead
    u = q.normalize(w).detach().reshape(-1, 1).double()
    dist = (u - levels.double().reshape(1, -1)).abs()
    got = dist.gather(1, chosen.reshape(-1, 1))
    if cls is TernaryWeight and k == 2:
        thr = 0.7 * w.abs().double().mean()
        expect = torch.sign(w.double()) * (w.double().abs() > thr)
        assert torch.equal(levels[chosen].double(), expect.reshape(-1))
    else:
        assert (got <= dist.amin(dim=1, keepdim=True) + 1e-5 * (1 + u.abs())).all()

    # idempotence in w-space, for every quantizer whose statistics reproduce themselves
    # (DoReFa/PACT k >= 2 renormalize through tanh, see test_dorefa_level_map_is_idempotent)
    if not (cls in DOREFA_LIKE and k >= 2):
        again = q(out).detach()
        torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-6 * float(s))


@pytest.mark.parametrize("cls,k", [p for p in CLASS_K if p.values[0] in DOREFA_LIKE and p.values[1] >= 2])
@given(data=st.data())
def test_dorefa_level_map_is_idempotent(cls, k, data):
    """DoReFa's tanh renormalization is not idempotent in w-space; its level map is in u-space:
    a weight whose u(w) is already a level is quantized to exactly that level (scale none, or
    learned with s known; with 'max' u depends on s = max|w| itself)."""
    scale = data.draw(st.sampled_from(["none", "learned"]))
    levels = cls.levels(k)
    idx = data.draw(st.lists(st.integers(0, levels.numel() - 1), min_size=0, max_size=20))
    top = data.draw(st.sampled_from([0, levels.numel() - 1]))  # u = +-1 must be present
    c = data.draw(st.floats(0.05, 0.95))
    s = data.draw(st.floats(0.5, 4.0)) if scale == "learned" else 1.0
    target = levels[torch.tensor([top] + idx)].double()
    w = (s * torch.atanh(c * target)).float()  # tanh(w/s) = c * level, max |tanh| = c
    q = quantizer(cls, k, w, scale)
    if scale == "learned":
        with torch.no_grad():
            q.scale.fill_(s)
    torch.testing.assert_close(q.normalize(w).double(), target, atol=1e-5, rtol=0)
    torch.testing.assert_close(q(w).detach().double() / s, target, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls,k", CLASS_K)
def test_empty_weight(cls, k):
    w = torch.empty(0, 3)
    q = quantizer(cls, k, w, "max" if cls.uses_output_scale else "none")
    out = q(w)
    assert out.shape == (0, 3)


# ---- STE gradients --------------------------------------------------------------------------

@pytest.mark.parametrize("k", WRPNWeight.supported_bits)
@pytest.mark.parametrize("scale", SCALE_MODES)
def test_wrpn_ste_gradient(k, scale):
    """d sum(w_q g)/dw = g inside [-s, s] (clip boundaries included: clamp passes them), 0 outside."""
    w = torch.tensor([-1.5, -1.0, -0.7, -0.3, 0.0, 0.2, 0.7, 0.99, 1.0, 1.2, 3.0])
    q = quantizer(WRPNWeight, k, w, scale)
    if scale == "learned":
        with torch.no_grad():
            q.scale.fill_(0.7)
    s = {"none": 1.0, "max": 3.0, "learned": 0.7}[scale]
    w = w.clone().requires_grad_(True)
    g = torch.linspace(0.5, 1.5, w.numel())
    (q(w) * g).sum().backward()
    inside = (w.detach().abs() <= s).float()
    assert inside[w.detach().abs() == s].all()  # the boundaries themselves are in the set
    torch.testing.assert_close(w.grad, g * inside, rtol=1e-5, atol=1e-7)


def _dorefa_reference(w: torch.Tensor, s: torch.Tensor | float, k: int) -> torch.Tensor:
    """DoReFa with round (and sign, for k = 1) replaced by the identity."""
    v = w / s
    if k == 1:
        e = v.detach().abs().mean()
        return s * e * (v / e)
    t = torch.tanh(v)
    u = t / t.abs().amax()
    n = 2**k - 1
    return s * (2.0 * (((u + 1.0) / 2.0) * n) / n - 1.0)


@pytest.mark.parametrize("cls", DOREFA_LIKE)
@pytest.mark.parametrize("k", DoReFaWeight.supported_bits)
@pytest.mark.parametrize("scale", SCALE_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_dorefa_ste_gradient_matches_reference(cls, k, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(6, 5, generator=gen) * (0.3 + 2 * seed)
    g = torch.randn(6, 5, generator=gen)
    q = quantizer(cls, k, w0, scale)
    w = w0.clone().requires_grad_(True)
    (q(w) * g).sum().backward()
    w_ref = w0.clone().requires_grad_(True)
    s = torch.as_tensor(q.output_scale(w_ref)).detach()
    (_dorefa_reference(w_ref, s, k) * g).sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", LSQWeight.supported_bits)
def test_lsq_weight_gradients_match_the_paper(k):
    """dw_q/ds = (round(v) - v) inside, -Q_N below, Q_P above, times g = 1/sqrt(N Q_P);
    dw_q/dw = 1 inside the clip range, 0 outside."""
    q_n, q_p = 2 ** (k - 1), 2 ** (k - 1) - 1
    s0 = 0.25
    # v = w / s: strictly inside, strictly below -Q_N, strictly above Q_P
    v = torch.tensor([-q_n - 3.3, -q_n - 0.4, -q_n + 0.3, -0.6, -0.2, 0.0, 0.3, 0.45, q_p - 0.3, q_p + 0.2, q_p + 7.0])
    w0 = v * s0
    q = quantizer(LSQWeight, k, w0)
    with torch.no_grad():
        q.step.fill_(s0)
    w = w0.clone().requires_grad_(True)
    g = torch.linspace(-1.0, 2.0, w.numel())
    (q(w) * g).sum().backward()
    vd = (w0 / s0).double()
    per = torch.where(vd < -q_n, torch.full_like(vd, -q_n),
                      torch.where(vd > q_p, torch.full_like(vd, q_p), torch.round(vd) - vd))
    grad_factor = 1.0 / math.sqrt(w0.numel() * q_p)
    expected = (g.double() * per).sum() * grad_factor
    assert q.step.grad.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    inside = ((vd >= -q_n) & (vd <= q_p)).float()
    torch.testing.assert_close(w.grad, g * inside, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", LSQWeight.supported_bits)
def test_lsq_clip_boundary_counts_as_inside(k):
    """At v = Q_P or v = -Q_N exactly the clamp passes the gradient (ste.py's convention):
    dw_q/dw = 1 and the step gradient is the inside formula round(v) - v = 0."""
    q_n, q_p = 2 ** (k - 1), 2 ** (k - 1) - 1
    w0 = torch.tensor([-float(q_n), float(q_p)]) * 0.5
    q = quantizer(LSQWeight, k, w0)
    with torch.no_grad():
        q.step.fill_(0.5)
    w = w0.clone().requires_grad_(True)
    q(w).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(2))
    assert q.step.grad.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("k", TernaryWeight.supported_bits)
def test_ternary_ste_passes_gradient_unchanged(k):
    """a and t carry no gradient; the STE passes the gradient to w unchanged (inside max|w|)."""
    gen = torch.Generator().manual_seed(k)
    w0 = torch.randn(4, 7, generator=gen)
    q = quantizer(TernaryWeight, k, w0)
    w = w0.clone().requires_grad_(True)
    g = torch.randn(4, 7, generator=gen)
    (q(w) * g).sum().backward()
    torch.testing.assert_close(w.grad, g, rtol=1e-5, atol=1e-6)


# ---- rounding at exact ties -----------------------------------------------------------------

@pytest.mark.parametrize("k", range(2, 9))
def test_wrpn_rounds_half_to_even(k):
    n = 2 ** (k - 1) - 1
    ties = torch.tensor([t for t in (0.5, 1.5, 2.5) if t < n] + [-t for t in (0.5, 1.5, 2.5) if t < n])
    u = ties / n
    assert torch.equal(u * n, ties), "precondition: u * n is an exact tie in float32"
    out = quantizer(WRPNWeight, k, u)(u).detach()
    expected = {0.5: 0.0, 1.5: 2.0, 2.5: 2.0, -0.5: 0.0, -1.5: -2.0, -2.5: -2.0}
    assert torch.equal(torch.round(out * n), torch.tensor([expected[t] for t in ties.tolist()]))
    torch.testing.assert_close(out * n, torch.round(out * n), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", LSQWeight.supported_bits)
def test_lsq_rounds_half_to_even(k):
    q_p = 2 ** (k - 1) - 1
    ties = torch.tensor([t for t in (0.5, 1.5, 2.5, -0.5, -1.5, -2.5) if -q_p - 1 <= t <= q_p])
    q = quantizer(LSQWeight, k, ties)
    with torch.no_grad():
        q.step.fill_(1.0)
    out = q(ties).detach()
    expected = {0.5: 0.0, 1.5: 2.0, 2.5: 2.0, -0.5: 0.0, -1.5: -2.0, -2.5: -2.0}
    assert torch.equal(out, torch.tensor([expected[t] for t in ties.tolist()]))


# ---- NaN and inf ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls,k,scale", CLASS_K_SCALE)
def test_nan_stays_nan_and_does_not_poison_statistics(cls, k, scale):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(5, 8, generator=gen) * 0.4
    w_nan = w.clone()
    w_nan[1, 3] = float("nan")
    w_nan[4, 0] = float("nan")
    nan_mask = torch.isnan(w_nan)
    q = quantizer(cls, k, w_nan, scale)
    for p in q.parameters():  # learned statistics initialised from the NaN weight are finite
        assert torch.isfinite(p).all()
    if cls is LSQWeight:
        ref_init = quantizer(cls, k, w[~nan_mask], scale).step
        assert q.step.item() == pytest.approx(ref_init.item(), rel=1e-5)
    out = q(w_nan).detach()
    assert torch.equal(torch.isnan(out), nan_mask)
    # every other entry is what it would be without the NaN entries (same quantizer object)
    without = q(w_nan[~nan_mask]).detach()
    torch.testing.assert_close(out[~nan_mask], without, rtol=1e-5, atol=1e-7)
    assert_on_levels(out[~nan_mask] / value_scale(q, w_nan), cls.levels(k))


@pytest.mark.parametrize("cls,k,scale", CLASS_K_SCALE)
def test_infinities_map_to_the_extreme_levels(cls, k, scale):
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(5, 8, generator=gen) * 0.4
    w[0, 0] = float("inf")
    w[2, 5] = float("-inf")
    w[3, 3] = float("nan")
    q = quantizer(cls, k, w, scale)
    for p in q.parameters():
        assert torch.isfinite(p).all()
    out = q(w).detach()
    nan_mask = torch.isnan(w)
    assert torch.equal(torch.isnan(out), nan_mask), "only the NaN input may give NaN"
    assert torch.isfinite(out[~nan_mask]).all()
    s = value_scale(q, w)
    levels = cls.levels(k)
    assert out[0, 0].item() == pytest.approx((s * levels[-1]).item(), rel=1e-6)
    assert out[2, 5].item() == pytest.approx((s * levels[0]).item(), rel=1e-6)
    assert_on_levels(out[~nan_mask] / s, levels)


# ---- construction errors --------------------------------------------------------------------

BAD_BITS = [0, 9, 16, -1, 2.5, "4", True, 32, None]


@pytest.mark.parametrize("cls", WEIGHT_CLASSES)
@pytest.mark.parametrize("bits", BAD_BITS, ids=repr)
def test_weight_quantizer_rejects_bad_bits(cls, bits):
    with pytest.raises(BitwidthError, match="layer3.conv1") as info:
        cls(bits, torch.randn(3), layer="layer3.conv1")
    assert isinstance(info.value, ValueError)


def test_lsq_weight_rejects_one_bit():
    with pytest.raises(BitwidthError, match=r"lsq.*'fc'.*2\.\.8"):
        LSQWeight(1, torch.randn(3), layer="fc")


@pytest.mark.parametrize("cls", WEIGHT_CLASSES)
def test_invalid_scale_mode(cls):
    with pytest.raises(ConfigError, match="conv"):
        cls(4, torch.randn(3), layer="conv", scale="mean")


# ---- what each quantizer tells the methods (issue 18: no tables of quantizer names elsewhere) ----

def test_quantizers_carry_their_learned_scale_and_seed_it():
    import torch
    from lowbit.quant.registry import FAMILIES

    w = torch.randn(8, 8)
    for family in FAMILIES.values():
        learned = family.weight(3, w, "l", scale="learned")
        fixed = family.weight(3, w, "l", scale="max")
        if family.weight.uses_output_scale:
            assert learned.learned_scale is learned.scale and fixed.learned_scale is None
            assert learned.seed_scale(0.5) and float(learned.scale.detach()) == 0.5 and not fixed.seed_scale(0.5)
        elif family.weight.__name__ == "LSQWeight":
            assert learned.seed_scale(0.5) and float(learned.step.detach()) == pytest.approx(0.5 / 4)  # outer level at 0.5
        else:  # TWN: its scale is a statistic of the weights, nothing to seed
            assert learned.learned_scale is None and not learned.seed_scale(0.5)


def test_pact_activation_reads_its_options_from_the_spec():
    from lowbit.quant.pact import PACTAct
    from lowbit.quant.registry import QuantizerSpec

    act = QuantizerSpec("pact", pact_alpha_init=3.0, pact_alpha_decay=0.1).make_act(4, "l")
    assert isinstance(act, PACTAct) and float(act.alpha) == 3.0 and act.alpha_decay == 0.1
    assert type(QuantizerSpec("dorefa").make_act(4, "l")).__name__ == "DoReFaAct"
