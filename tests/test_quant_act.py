"""Activation quantizers (METHODS.md section 1): levels, STE, PACT's α, LSQ's step, ties, NaN/inf."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import BitwidthError
from lowbit.quant import DoReFaAct, LSQAct, PACTAct, TernaryAct, WRPNAct

ACT_CLASSES = (DoReFaAct, WRPNAct, PACTAct, LSQAct, TernaryAct)
UNIT_CLASSES = (DoReFaAct, WRPNAct, TernaryAct)  # clip to [0, 1], then q_k
CLASS_K = [pytest.param(c, k, id=f"{c.family}-k{k}") for c in ACT_CLASSES for k in c.supported_bits]
UNIT_K = [pytest.param(c, k, id=f"{c.family}-k{k}") for c in UNIT_CLASSES for k in c.supported_bits]
ALL_K = range(1, 9)

FINITE = st.one_of(
    st.floats(-0.5, 1.5, width=32),
    st.floats(-(2.0**100), 2.0**100, width=32, allow_subnormal=True),
    st.floats(-(2.0**-123), 2.0**-123, width=32, allow_subnormal=True),
)
ACTS = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6), elements=FINITE)


def make(cls, k: int, alpha: float = 8.0):
    if cls is PACTAct:
        return PACTAct(k, "layer2.conv", alpha_init=alpha)
    return cls(k, "layer2.conv")


def value_scale(q) -> torch.Tensor:
    """output = value_scale * level."""
    if isinstance(q, PACTAct):
        return q.alpha.detach().abs().clamp_min(1e-8)
    if isinstance(q, LSQAct):
        return q.step.detach().abs().clamp_min(1e-8)
    return torch.tensor(1.0)


def assert_on_levels(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    if values.numel() == 0:
        return values.long()
    dist = (values.reshape(-1, 1).double() - levels.double().reshape(1, -1)).abs()
    idx = dist.argmin(dim=1)
    best = dist.gather(1, idx.reshape(-1, 1)).reshape(-1)
    bad = best > 1e-6 * levels.double()[idx].abs().clamp_min(1.0)
    assert not bad.any(), f"off-level values {values.reshape(-1)[bad][:5].tolist()} (levels {levels.tolist()})"
    return idx


# ---- level geometry -------------------------------------------------------------------------

@pytest.mark.parametrize("cls,k", CLASS_K)
def test_act_levels_geometry(cls, k):
    levels = cls.levels(k).double()
    assert levels.numel() == 2**k
    spacing, offset = float(cls.spacing(k)), float(cls.offset(k))
    torch.testing.assert_close(levels.diff(), torch.full((2**k - 1,), spacing, dtype=torch.float64), atol=1e-6, rtol=0)
    m = ((levels - offset) / spacing).round()
    torch.testing.assert_close(levels, offset + m * spacing, atol=1e-6, rtol=0)
    assert levels[0].item() == 0.0
    assert levels[-1].item() == pytest.approx(2**k - 1 if cls is LSQAct else 1.0)
    kt = torch.tensor(float(k))
    assert float(cls.spacing(kt)) == pytest.approx(spacing, rel=1e-6)
    assert float(cls.offset(kt)) == pytest.approx(offset, abs=1e-7)


# ---- the main property ----------------------------------------------------------------------

@pytest.mark.parametrize("cls,k", CLASS_K)
@given(x_np=ACTS, alpha=st.floats(0.05, 16.0), perturb=st.floats(0.25, 4.0))
def test_act_outputs_are_levels(cls, k, x_np, alpha, perturb):
    x = torch.from_numpy(x_np)
    q = make(cls, k, alpha)
    if cls is LSQAct:
        q(x)  # first training batch initialises the step
        with torch.no_grad():
            q.step.mul_(perturb)
    out = q(x).detach()
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert torch.unique(out).numel() <= 2**k
    s = value_scale(q)
    levels = cls.levels(k)
    chosen = assert_on_levels(out / s, levels)
    # a nearest level of x / s (ties either way)
    dist = (x.reshape(-1, 1).double() / s.double() - levels.double().reshape(1, -1)).abs()
    got = dist.gather(1, chosen.reshape(-1, 1))
    assert (got <= dist.amin(dim=1, keepdim=True) * (1 + 1e-6) + 1e-5).all()
    # idempotent: a level maps to itself
    torch.testing.assert_close(q(out).detach(), out, rtol=1e-6, atol=1e-7 * float(s))


@pytest.mark.parametrize("cls", ACT_CLASSES)
def test_empty_and_double_activations(cls):
    q = make(cls, 4)
    assert q(torch.empty(0, 5)).shape == (0, 5)
    x = torch.linspace(-1, 2, 13, dtype=torch.float64)
    assert q(x).dtype == torch.float64


# ---- STE gradients --------------------------------------------------------------------------

@pytest.mark.parametrize("cls,k", UNIT_K)
def test_unit_act_ste_gradient(cls, k):
    """Gradient 1 on [0, 1] (both ends included: clamp passes its boundaries), 0 outside."""
    x = torch.tensor([-2.0, -0.5, -1e-7, 0.0, 1e-7, 0.3, 0.5, 0.999, 1.0, 1.0000001, 1.5, 2.0], requires_grad=True)
    g = torch.linspace(0.5, 2.0, x.numel())
    (make(cls, k)(x) * g).sum().backward()
    inside = ((x.detach() >= 0) & (x.detach() <= 1)).float()
    torch.testing.assert_close(x.grad, g * inside)


@pytest.mark.parametrize("k", ALL_K)
@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_pact_gradients(k, alpha):
    """dy/dx = 1 on [0, α) and 0 elsewhere; dy/dα = 1 where x >= α and 0 elsewhere (summed)."""
    x = torch.tensor([-3.0, -0.1, 0.0, 0.3, 0.5 * alpha, alpha - 1e-3, alpha, alpha + 1e-3, 2 * alpha, 50.0],
                     requires_grad=True)
    g = torch.linspace(-1.0, 2.0, x.numel())
    q = make(PACTAct, k, alpha)
    (q(x) * g).sum().backward()
    xd = x.detach()
    torch.testing.assert_close(x.grad, g * ((xd >= 0) & (xd < alpha)).float())
    assert q.alpha.grad.item() == pytest.approx(g[xd >= alpha].sum().item(), rel=1e-5, abs=1e-6)


def test_pact_aux_loss_is_l2_on_alpha():
    q = PACTAct(4, "conv", alpha_init=3.0, alpha_decay=0.01)
    loss = q.aux_loss()
    assert loss.item() == pytest.approx(0.5 * 0.01 * 9.0)
    loss.backward()
    assert q.alpha.grad.item() == pytest.approx(0.01 * 3.0)
    for cls in UNIT_CLASSES + (LSQAct,):
        assert make(cls, 4).aux_loss() is None


@pytest.mark.parametrize("k", ALL_K)
def test_lsq_act_gradients_match_the_paper(k):
    """Q_N = 0, Q_P = 2^k - 1: ds gets (round(v) - v) inside, 0 below, Q_P above, times
    g = 1/sqrt(N_features Q_P); dx = 1 inside [0, Q_P s], 0 outside."""
    q_p = 2**k - 1
    s0 = 0.5
    v = torch.tensor([[-3.0, -0.4, 0.3, 0.45, 0.6], [q_p - 0.3, q_p - 0.6, q_p + 0.2, q_p + 5.0, 0.2]])
    x0 = v * s0
    q = make(LSQAct, k)
    q.eval()  # no first-batch initialisation
    with torch.no_grad():
        q.step.fill_(s0)
    x = x0.clone().requires_grad_(True)
    g = torch.linspace(-1.0, 2.0, x.numel()).reshape(x.shape)
    (q(x) * g).sum().backward()
    vd = (x0 / s0).double()
    per = torch.where(vd < 0, torch.zeros_like(vd), torch.where(vd > q_p, torch.full_like(vd, q_p), torch.round(vd) - vd))
    expected = (g.double() * per).sum() / math.sqrt(x0[0].numel() * q_p)
    assert q.step.grad.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(x.grad, g * ((vd >= 0) & (vd <= q_p)).float())


@pytest.mark.parametrize("k", ALL_K)
def test_lsq_act_initialises_from_the_first_training_batch_only(k):
    x = torch.tensor([[0.5, -1.0, 2.0, float("nan")], [float("inf"), 0.0, 1.5, -float("inf")]])
    q = make(LSQAct, k)
    q.eval()
    q(x)
    assert not bool(q.initialized) and q.step.item() == 1.0  # eval never initialises
    q.train()
    q(x)
    finite = torch.tensor([0.5, 1.0, 2.0, 0.0, 1.5])
    assert bool(q.initialized)
    assert q.step.item() == pytest.approx(2 * finite.mean().item() / math.sqrt(2**k - 1), rel=1e-6)
    step = q.step.item()
    q(x * 10)
    assert q.step.item() == step


@pytest.mark.parametrize("k", ALL_K)
def test_lsq_act_waits_for_a_batch_that_is_not_all_zero(k):
    q = make(LSQAct, k)
    q.train()
    q(torch.zeros(4, 3))  # dead ReLUs: no scale to learn from
    assert not bool(q.initialized) and q.step.item() == 1.0
    q(torch.full((4, 3), 0.5))
    assert bool(q.initialized)
    assert q.step.item() == pytest.approx(2 * 0.5 / math.sqrt(2**k - 1), rel=1e-6)


# ---- ties -----------------------------------------------------------------------------------

HALF_EVEN = {0.5: 0.0, 1.5: 2.0, 2.5: 2.0}


@pytest.mark.parametrize("cls,k", UNIT_K)
def test_unit_act_rounds_half_to_even(cls, k):
    n = 2**k - 1
    ties = torch.tensor([t for t in HALF_EVEN if t < n])
    x = ties / n
    assert torch.equal(x * n, ties), "precondition: exact ties in float32"
    out = make(cls, k)(x).detach()
    assert torch.equal(torch.round(out * n), torch.tensor([HALF_EVEN[t] for t in ties.tolist()]))


@pytest.mark.parametrize("k", ALL_K)
def test_pact_rounds_half_to_even(k):
    n = 2**k - 1
    ties = torch.tensor([t for t in HALF_EVEN if t < n])
    out = make(PACTAct, k, alpha=float(n))(ties).detach()  # α = n: y (n / α) = y exactly
    assert torch.equal(out, torch.tensor([HALF_EVEN[t] for t in ties.tolist()]))


@pytest.mark.parametrize("k", ALL_K)
def test_lsq_act_rounds_half_to_even(k):
    ties = torch.tensor([t for t in HALF_EVEN if t < 2**k - 1])
    q = make(LSQAct, k)
    q.eval()
    out = q(ties).detach()  # step 1
    assert torch.equal(out, torch.tensor([HALF_EVEN[t] for t in ties.tolist()]))


# ---- NaN and inf ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls,k", CLASS_K)
def test_act_nan_and_inf(cls, k):
    gen = torch.Generator().manual_seed(k)
    x = torch.rand(4, 6, generator=gen) * 1.4 - 0.2
    x[0, 1] = float("nan")
    x[2, 2] = float("inf")
    x[3, 5] = float("-inf")
    q = make(cls, k, alpha=1.3)
    out = q(x).detach()  # LSQ: first batch initialises the step; it must ignore NaN/inf
    assert torch.isfinite(q.step if cls is LSQAct else torch.zeros(())).all()
    nan_mask = torch.isnan(x)
    assert torch.equal(torch.isnan(out), nan_mask)
    s = value_scale(q)
    levels = cls.levels(k)
    assert out[2, 2].item() == pytest.approx((s * levels[-1]).item(), rel=1e-6)
    assert out[3, 5].item() == 0.0
    assert_on_levels(out[~nan_mask] / s, levels)
    # the NaN does not change the other entries
    clean = x.clone()
    clean[0, 1] = 0.0
    assert torch.equal(q(clean).detach()[~nan_mask], out[~nan_mask])


# ---- bits -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ACT_CLASSES)
@pytest.mark.parametrize("bits", [0, 9, 16, -1, 2.5, "4", True, 32, None], ids=repr)
def test_act_quantizer_rejects_bad_bits(cls, bits):
    with pytest.raises(BitwidthError, match="layer2.conv"):
        make(cls, bits)
