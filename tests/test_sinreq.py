"""SinReQ (METHODS.md section 2) and the λ schedules (sections 2 and 3)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lowbit.errors import ConfigError
from lowbit.nn import quantize_, quantized_layers
from lowbit.plan import Plan
from lowbit.quant import FAMILIES
from lowbit.quant.registry import QuantizerSpec
from lowbit.reg.schedules import constant, make_schedule, three_phase_bits, three_phase_weight, warmup
from lowbit.reg.sinreq import SinReQ, grid_distance, layer_penalty, sin2_grid, sinreq_penalty
from lowbit.train.loop import LossTerm

CASES = [(family, k) for family, spec in sorted(FAMILIES.items()) for k in spec.weight.supported_bits
         if math.isfinite(float(spec.weight.spacing(k)))]


def _elementwise(u: torch.Tensor, k: int, cls) -> torch.Tensor:
    return torch.stack([sinreq_penalty(u[i:i + 1], k, cls) for i in range(u.numel())])


@pytest.mark.parametrize("family,k", CASES)
def test_zero_at_levels_one_at_midpoints(family: str, k: int) -> None:
    cls = FAMILIES[family].weight
    levels = cls.levels(k)
    assert (_elementwise(levels, k, cls) < 1e-6).all()
    assert sinreq_penalty(levels, k, cls) < 1e-6
    mids = (levels[1:] + levels[:-1]) / 2
    assert torch.allclose(_elementwise(mids, k, cls), torch.ones(mids.numel()), atol=1e-5)
    # the midpoints are maxima: nowhere on a fine grid does the penalty exceed 1
    grid = torch.linspace(float(levels[0]), float(levels[-1]), 1001)
    assert float(sin2_grid(grid, cls.spacing(k), cls.offset(k)).max()) <= 1.0 + 1e-6


@given(case=st.sampled_from(CASES), u=st.floats(-4.0, 4.0, allow_nan=False))
def test_period_is_spacing(case: tuple[str, int], u: float) -> None:
    # the sinusoid itself (range_penalty=False) is periodic everywhere; with the range term (the
    # default) the period holds while both points lie inside the level range
    family, k = case
    cls = FAMILIES[family].weight
    x = torch.tensor([u], dtype=torch.float64)
    delta = cls.spacing(k)
    a, b = sinreq_penalty(x, k, cls, range_penalty=False), sinreq_penalty(x + delta, k, cls, range_penalty=False)
    assert abs(float(a) - float(b)) < 1e-9
    levels = cls.levels(k)
    if float(levels[0]) <= u and u + delta <= float(levels[-1]):
        a, b = sinreq_penalty(x, k, cls), sinreq_penalty(x + delta, k, cls)
        assert abs(float(a) - float(b)) < 1e-9


def test_continuous_k_matches_integer_k() -> None:
    u = torch.linspace(-1, 1, 37)
    for family in ("dorefa", "wrpn", "lsq"):
        cls = FAMILIES[family].weight
        for k in (2, 3, 5):
            assert torch.allclose(sinreq_penalty(u, torch.tensor(float(k)), cls), sinreq_penalty(u, k, cls), atol=1e-6)


def _small_layer(family: str, bits: int = 3, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 8))
    quantize_(model, Plan.uniform(bits, keep_first_last=False), QuantizerSpec(family, scale="none"))
    return model, model[0]


@pytest.mark.parametrize("family", ["dorefa", "wrpn", "lsq", "twn"])
def test_gradient_step_reduces_grid_distance(family: str) -> None:
    model, layer = _small_layer(family, bits=2 if family == "twn" else 3)
    reg = SinReQ(model)
    before, _ = grid_distance(model)
    loss = reg(model)
    loss.backward()
    with torch.no_grad():
        g = layer.weight.grad
        layer.weight -= 0.02 * g / g.abs().max()  # a small normalized gradient step
    after, _ = grid_distance(model)
    assert after < before
    assert float(reg(model).detach()) < float(loss.detach())


def test_aligned_and_raw_differ_for_dorefa() -> None:
    _, layer = _small_layer("dorefa")
    assert not torch.allclose(layer_penalty(layer, "aligned"), layer_penalty(layer, "raw"))


def test_aligned_and_raw_coincide_for_wrpn_unit_range() -> None:
    _, layer = _small_layer("wrpn")
    assert float(layer.weight.detach().abs().max()) <= 1.0
    assert torch.equal(layer.weight_quantizer.normalize(layer.weight), layer.weight)
    assert torch.equal(layer_penalty(layer, "aligned"), layer_penalty(layer, "raw"))


def test_unknown_domain_is_rejected() -> None:
    model, layer = _small_layer("dorefa")
    with pytest.raises(ConfigError, match="did you mean 'aligned'"):
        layer_penalty(layer, "alligned")
    with pytest.raises(ConfigError):
        SinReQ(model, domain="tanh")


def _tiny_model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    )
    quantize_(model, Plan.uniform(2))
    return model


def test_sinreq_on_tiny_model() -> None:
    model = _tiny_model()
    layers = quantized_layers(model)
    assert sorted(layer.weight_bits for layer in layers.values()) == [2, 2, 8, 8]
    reg = SinReQ(model)
    value = reg(model)
    assert value.dim() == 0 and torch.isfinite(value) and float(value.detach()) > 0
    value.backward()
    for layer in layers.values():
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        assert layer.weight.grad.abs().sum() > 0
    # the sum of the per-layer penalties
    total = sum(float(layer_penalty(layer).detach()) for layer in layers.values())
    assert math.isclose(float(value.detach()), total, rel_tol=1e-5)
    mean, per_layer = grid_distance(model)
    assert set(per_layer) == set(layers)
    assert all(0.0 <= v <= 0.5 for v in per_layer.values())
    assert 0.0 <= mean <= 0.5


def test_multipliers_and_loss_term() -> None:
    model = _tiny_model()
    names = list(quantized_layers(model))
    full = float(SinReQ(model)(model).detach())
    first = float(layer_penalty(quantized_layers(model)[names[0]]).detach())
    weighted = float(SinReQ(model, multipliers={names[0]: 0.0})(model).detach())
    assert math.isclose(weighted, full - first, rel_tol=1e-5, abs_tol=1e-7)
    with pytest.raises(ConfigError, match="did you mean"):
        SinReQ(model, multipliers={names[0] + "x": 1.0})
    with pytest.raises(ConfigError):
        SinReQ(model, multipliers={names[0]: -1.0})
    term = SinReQ(model).as_loss_term(warmup(2.0))
    assert isinstance(term, LossTerm) and term.name == "sinreq"
    assert term.weight_at(0.0) == 0.0 and term.weight_at(1.0) == 2.0
    assert math.isclose(float(term.fn(model).detach()), full, rel_tol=1e-6)


def test_sinreq_needs_a_quantized_model() -> None:
    with pytest.raises(ConfigError, match="quantize_"):
        SinReQ(nn.Sequential(nn.Linear(2, 2)))


def test_constant_and_warmup_schedules() -> None:
    c = constant(0.3)
    assert all(c(t) == 0.3 for t in (0.0, 0.5, 1.0))
    lin = warmup(2.0, end=0.4)
    assert lin(0.0) == 0.0
    assert math.isclose(lin(0.2), 1.0)
    assert lin(0.4) == 2.0 and lin(0.9) == 2.0
    smooth = warmup(2.0, end=0.4, shape="tanh")
    assert abs(smooth(0.0)) < 1e-12 and math.isclose(smooth(0.2), 1.0) and smooth(0.4) == 2.0
    assert smooth(0.1) < lin(0.1)  # an S-curve: slower start
    assert warmup(1.0, end=0.0)(0.0) == 1.0
    with pytest.raises(ConfigError, match="did you mean 'tanh'"):
        warmup(1.0, shape="tahn")
    with pytest.raises(ConfigError):
        warmup(1.0, end=1.5)


def test_three_phase_schedules() -> None:
    w = three_phase_weight(2.0)
    assert w(0.0) < 1e-6 and math.isclose(w(0.2), 1.0) and math.isclose(w(1.0), 2.0, rel_tol=1e-6)
    b = three_phase_bits(0.5)
    assert math.isclose(b(0.2), 0.25, rel_tol=1e-6)
    assert math.isclose(b(0.5), 0.5, rel_tol=1e-6)
    assert math.isclose(b(0.8), 0.25, rel_tol=1e-6)
    assert abs(b(1.0)) < 1e-6 and abs(b(0.0)) < 1e-6


def test_make_schedule() -> None:
    assert make_schedule("constant", 0.7)(0.5) == 0.7
    assert make_schedule("warmup", 1.0)(0.1) == pytest.approx(0.5)
    assert make_schedule("three-phase", 1.0)(0.2) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="did you mean 'three-phase'"):
        make_schedule("three_phase", 1.0)
    with pytest.raises(ConfigError, match="choose one of"):
        make_schedule("cosine", 1.0)
