"""Regularizers that cannot cheat (issue 15 part 3).

SinReQ's penalty moves the weights, never the quantizer's grid (no gradient into a learned scale,
LSQ's step or any other quantizer parameter unless ``train_quantizer=True``); its zeros are
exactly the quantizer's levels (the range term removes the sinusoid's phantom zeros beyond the
outer levels); a short training run with λ large keeps the step where training without SinReQ
puts it; WaveQ's weight term never reaches a quantizer parameter.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lowbit.errors import ConfigError
from lowbit.nn import is_quantizer_param, quantize_, quantized_layers
from lowbit.plan import Plan
from lowbit.quant import FAMILIES
from lowbit.quant.base import SCALE_MODES
from lowbit.quant.registry import QuantizerSpec
from lowbit.reg.sinreq import (SinReQ, detached_parameters, grid_distance, layer_penalty, level_range, sin2_grid,
                               sinreq_penalty, sinreq_values)
from lowbit.reg.waveq import WaveQ, WaveQConfig

FAMILY_NAMES = ("dorefa", "wrpn", "pact", "lsq", "twn")
CASES = [(family, k) for family in FAMILY_NAMES for k in FAMILIES[family].weight.supported_bits]


def _quantized(family: str, bits: int, scale: str, conv: bool, shape: tuple[int, int, int], seed: int,
               act_bits: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    c_in, c_out, size = shape
    layer = nn.Conv2d(c_in, c_out, size) if conv else nn.Linear(c_in * size, c_out)
    model = nn.Sequential(layer)
    quantize_(model, Plan.uniform(bits, act_bits, keep_first_last=False), QuantizerSpec(family, scale=scale))
    return model


def _quantizer_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if is_quantizer_param(n)}


def _grads(model: nn.Module, reg: SinReQ) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    reg(model).backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


def _learns_grid(model: nn.Module) -> bool:
    """Whether the weight quantizer's normalize reads a learned parameter (LSQ's step, a learned scale)."""
    q = quantized_layers(model)["0"].weight_quantizer
    return hasattr(q, "step") or getattr(q, "scale_mode", "none") == "learned"


@given(case=st.sampled_from(CASES), scale=st.sampled_from(SCALE_MODES), conv=st.booleans(),
       shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3)), seed=st.integers(0, 2**16))
def test_penalty_sends_no_gradient_into_quantizer_parameters(case, scale, conv, shape, seed) -> None:
    family, bits = case
    c_in, c_out, size = shape
    if c_in * c_out * size * (size if conv else 1) < 2:
        shape = (c_in, c_out + 1, size)  # one weight sits on a level of the tanh/mean-normalized quantizers
    model = _quantized(family, bits, scale, conv, shape, seed).double()  # float64: the gradients are compared
    params = _quantizer_params(model)
    assert params or not _learns_grid(model)
    grads = _grads(model, SinReQ(model))
    for name in params:
        assert grads[name] is None or torch.count_nonzero(grads[name]) == 0, name
    weight = grads["0.weight"]
    assert weight is not None and torch.isfinite(weight).all() and weight.abs().sum() > 0
    assert all(p.requires_grad for p in model.parameters())  # the switch is undone

    # train_quantizer=True: the old behaviour (without the range term: the old formula exactly)
    old = _grads(model, SinReQ(model, train_quantizer=True, range_penalty=False))
    model.zero_grad(set_to_none=True)
    layer = quantized_layers(model)["0"]
    q = layer.weight_quantizer
    sin2_grid(q.normalize(layer.weight), q.spacing(q.bits), q.offset(q.bits)).mean().backward()
    for name, p in model.named_parameters():
        if p.grad is None:
            assert old[name] is None or torch.count_nonzero(old[name]) == 0, name
        else:
            assert torch.allclose(old[name], p.grad, rtol=1e-9, atol=1e-12), name
    if _learns_grid(model):
        assert any(old[n] is not None and old[n].abs().sum() > 0 for n in params)
    # detaching the quantizer changes nothing for the weights
    trained = _grads(model, SinReQ(model, train_quantizer=True))
    assert torch.allclose(trained["0.weight"], weight, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family,k", CASES)
def test_zeros_are_exactly_the_levels(family: str, k: int) -> None:
    cls = FAMILIES[family].weight
    levels = cls.levels(k).double()
    delta = float(cls.spacing(k))
    assert (sinreq_values(levels, k, cls) < 1e-9).all()
    lo, hi = level_range(cls, k)
    assert (lo, hi) == (float(levels[0]), float(levels[-1]))
    steps = torch.linspace(0.01, 10.0, 1000, dtype=torch.float64)  # grid steps beyond the outer levels
    for side in (hi + steps * delta, lo - steps * delta):
        values = sinreq_values(side, k, cls)
        assert (values > 0).all()
        assert (values[1:] > values[:-1]).all()  # increasing with the distance
    # the sinusoid alone has phantom zeros one and more periods beyond the outer levels
    phantom = torch.tensor([hi + delta, lo - 2 * delta], dtype=torch.float64)
    assert (sinreq_values(phantom, k, cls, range_penalty=False) < 1e-9).all()
    assert (sinreq_values(phantom, k, cls) > 1.0).all()


@given(case=st.sampled_from(CASES), t=st.floats(-6.0, 6.0, allow_nan=False))
def test_penalty_bounds_the_distance_to_the_nearest_level(case, t: float) -> None:
    """penalty(u) >= sin^2(π min(d, 1/2)), d = distance to the nearest level in grid steps: zero only on a level."""
    family, k = case
    cls = FAMILIES[family].weight
    delta, offset = float(cls.spacing(k)), float(cls.offset(k))
    levels = offset + delta * torch.round((cls.levels(k).double() - offset) / delta)  # exact in float64
    lo, hi = float(levels[0]), float(levels[-1])
    u = torch.tensor([lo + t * (hi - lo + delta) if t >= 0 else lo + t * delta], dtype=torch.float64)
    value = float(sinreq_values(u, k, cls))
    d = float((levels - u).abs().min()) / delta
    assert value >= math.sin(math.pi * min(d, 0.5)) ** 2 - 1e-9
    if lo <= float(u) <= hi:  # inside the level range: the sinusoid itself
        assert value == pytest.approx(float(sin2_grid(u, delta, offset)), abs=1e-12)


@pytest.mark.parametrize("family,k", [("lsq", 3), ("dorefa", 1), ("twn", 2), ("dorefa", 4), ("wrpn", 1)])
@pytest.mark.parametrize("range_penalty", [True, False])
def test_fused_penalty_matches_the_elementwise_definition(family: str, k: int, range_penalty: bool) -> None:
    cls = FAMILIES[family].weight
    lo, hi = level_range(cls, k)
    g = torch.Generator().manual_seed(0)
    u = (lo + (hi - lo) * (torch.rand(500, generator=g, dtype=torch.float64) * 3 - 1)).requires_grad_(True)
    fused = sinreq_penalty(u, k, cls, range_penalty)
    (fused_grad,) = torch.autograd.grad(fused, u)
    reference = sinreq_values(u, k, cls, range_penalty).mean()
    (reference_grad,) = torch.autograd.grad(reference, u)
    assert float(fused) == pytest.approx(float(reference), rel=1e-10)
    assert torch.allclose(fused_grad, reference_grad, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: sinreq_penalty(x, k, cls, range_penalty), (u[:40].detach()
                                    .clone().requires_grad_(True),))


def test_range_term_needs_integer_bits() -> None:
    cls = FAMILIES["lsq"].weight
    u = torch.linspace(-3, 3, 7)
    with pytest.raises(ConfigError, match="integer bits"):
        sinreq_penalty(u, torch.tensor(2.5), cls)
    assert torch.isfinite(sinreq_penalty(u, torch.tensor(2.5), cls, range_penalty=False))
    assert sinreq_penalty(u, torch.tensor(3.0), cls) == sinreq_penalty(u, 3, cls)


def test_detached_parameters_restores_requires_grad_even_on_error() -> None:
    model = _quantized("lsq", 3, "none", False, (4, 3, 1), 0)
    q = quantized_layers(model)["0"].weight_quantizer
    frozen = quantized_layers(model)["0"].input_quantizer.step
    frozen.requires_grad_(False)
    with pytest.raises(RuntimeError, match="boom"), detached_parameters([model]):
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")
    assert q.step.requires_grad and model[0].weight.requires_grad and not frozen.requires_grad


def test_raw_domain_and_keywords() -> None:
    model = _quantized("lsq", 3, "none", False, (8, 4, 1), 0)
    grads = _grads(model, SinReQ(model, domain="raw", train_quantizer=True))
    assert grads["0.weight_quantizer.step"] is None  # the raw domain never reads the quantizer
    reg = SinReQ(model)
    assert reg.train_quantizer is False and reg.range_penalty is True
    assert "train_quantizer=False" in repr(reg) and "range_penalty=True" in repr(reg)
    layer = quantized_layers(model)["0"]
    assert torch.equal(layer_penalty(layer), reg(model))


# ---- a short training run: the step stays where the task puts it --------------------------------

def _digits():
    from lowbit.data import ArrayLoader, load_dataset

    data = load_dataset("digits")
    train = ArrayLoader(data.train, batch_size=72, shuffle=True, seed=0, mean=data.mean, std=data.std)
    test = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    return train, test


def _train_mlp(quantizer: str, scale: str, sinreq: dict | None, lam: float, loaders) -> tuple[dict, float]:
    from lowbit.train import TrainConfig, evaluate, fit

    train, test = loaders
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    quantize_(model, Plan.uniform(3, keep_first_last=False), QuantizerSpec(quantizer, scale=scale))
    terms = [] if sinreq is None else [SinReQ(model, **sinreq).as_loss_term(lam)]
    fit(model, train, TrainConfig(epochs=15, lr=0.05, schedule="constant"), loss_terms=terms,  # 300 steps
        no_decay=is_quantizer_param)
    grid = {}
    for name, layer in quantized_layers(model).items():
        q = layer.weight_quantizer
        grid[name] = float((q.step if hasattr(q, "step") else q.scale).detach().abs())
    return grid, evaluate(model, test)[1]


@pytest.mark.slow
@pytest.mark.parametrize("quantizer,scale,lam", [("lsq", "none", 1.0), ("wrpn", "learned", 0.1)])
def test_training_with_sinreq_keeps_the_grid_where_the_task_puts_it(quantizer: str, scale: str, lam: float) -> None:
    loaders = _digits()
    plain, plain_acc = _train_mlp(quantizer, scale, None, lam, loaders)
    fixed, acc = _train_mlp(quantizer, scale, {}, lam, loaders)
    for name in plain:
        assert plain[name] / 3 <= fixed[name] <= 3 * plain[name], (name, plain, fixed)
    assert acc > 0.8 and plain_acc > 0.8
    if quantizer == "lsq":  # the case: with the old behaviour the step runs away, accuracy to chance
        old, old_acc = _train_mlp(quantizer, scale, {"train_quantizer": True, "range_penalty": False}, lam, loaders)
        assert all(old[name] > 10 * plain[name] for name in plain), (old, plain)
        assert old_acc < 0.2


# ---- WaveQ ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantizer,scale", [("lsq", "none"), ("wrpn", "learned"), ("dorefa", "learned")])
def test_waveq_weight_term_reaches_no_quantizer_parameter(quantizer: str, scale: str) -> None:
    """WaveQ's sinusoid reads the weight and its own α, β, never a quantizer: even on a quantized
    network the quantizers' parameters get no gradient from it, while α and β do."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    quantize_(net, Plan.uniform(3, 4, keep_first_last=False), QuantizerSpec(quantizer, scale=scale))
    method = WaveQ(net, WaveQConfig(quantizer=quantizer, pin_first_last=False))
    with torch.no_grad():
        net[0].weight.mul_(5.0)  # some weights beyond α: the range term is active too
    method.penalty().backward()
    params = _quantizer_params(net)
    assert params
    assert all(p.grad is None for p in params.values())
    assert method.params.alpha.grad is not None and method.params.alpha.grad.abs().sum() > 0
    assert method.params.beta.grad is not None
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_grid_distance_is_unchanged_by_the_fix() -> None:
    model = _quantized("lsq", 3, "none", False, (8, 4, 1), 0)
    before = grid_distance(model)[0]
    SinReQ(model)(model).backward()
    assert grid_distance(model)[0] == before  # a read-out, no side effect
