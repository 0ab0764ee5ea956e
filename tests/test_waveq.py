"""WaveQ (METHODS.md section 3): β moves and moves down, stays in [b_min, b_max], budgets are met,
the fixed mode is SinReQ, the rounding rule, the freeze, and the grid geometry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lowbit.errors import ConfigError
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.quant.dorefa import DoReFaWeight
from lowbit.quant.registry import FAMILIES, QuantizerSpec
from lowbit.quant.wrpn import WRPNWeight
from lowbit.reg.sinreq import SinReQ, sin2_grid
from lowbit.reg.waveq import WaveQ, WaveQConfig, integer_bits, is_waveq_param
from lowbit.train import TrainConfig, fit


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _loader(n: int = 96, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _train(method: WaveQ, epochs: int = 4, lr: float = 0.05) -> list[dict]:
    config = TrainConfig(epochs=epochs, lr=lr, schedule="constant")
    return fit(method.wrap(), _loader(), config, loss_terms=method.loss_terms(), callbacks=[method.epoch_fields],
               step_callbacks=[method.step_callback], no_decay=is_waveq_param).history


def test_pins_and_learned_layers() -> None:
    method = WaveQ(_net(), WaveQConfig())
    assert method.names == ["2", "4"] and method.pinned == ["0", "6"]
    assert list(method.plan_bits()) == ["0", "2", "4", "6"]
    assert WaveQ(_net(), WaveQConfig(pin_first_last=False)).names == ["0", "2", "4", "6"]


def test_beta_gets_a_gradient_and_goes_down_under_the_bit_pressure() -> None:
    method = WaveQ(_net(), WaveQConfig(c_beta=0.5, lambda_w=0.1))
    loss = method.penalty() + method.bit_pressure()
    loss.backward()
    assert method.params.beta.grad is not None and torch.all(method.params.beta.grad > 0)
    assert method.params.alpha.grad is not None and torch.any(method.params.alpha.grad != 0)
    history = _train(method, epochs=3)
    first, last = history[0]["waveq_beta"], history[-1]["waveq_beta"]
    assert all(last[n] < 8.0 - 1.0 for n in method.names), last  # it moved, by more than a bit
    assert all(last[n] <= first[n] for n in method.names)


def test_beta_never_leaves_its_range() -> None:
    down = WaveQ(_net(), WaveQConfig(c_beta=1000.0, lambda_w=0.0, bits_min=3, freeze_at=1.0))
    up = WaveQ(_net(), WaveQConfig(c_beta=0.0, lambda_w=5.0, bits_max=6, beta_init=5.0, freeze_at=1.0, learn_scale=False,
                                   beta_lr_scale=1000.0))
    for method, low, high in ((down, 3.0, 8.0), (up, 2.0, 6.0)):
        seen = []
        config = TrainConfig(epochs=3, lr=0.05, schedule="constant")
        fit(method.wrap(), _loader(), config, loss_terms=method.loss_terms(),
            step_callbacks=[method.step_callback, lambda m, p: seen.append(method.params.beta.detach().clone())],
            no_decay=is_waveq_param)
        values = torch.stack(seen)
        assert values.min() >= low and values.max() <= high
    assert torch.all(down.params.beta == 3.0)  # the pressure drove it to the floor, not below (nor to 0)
    assert torch.all(up.params.beta == 6.0)  # 1/2^β alone pushes bits up: the ceiling holds too


def test_budget_met_after_training() -> None:
    method = WaveQ(_net(), WaveQConfig(budget=4.0, c_beta=2.0, lambda_w=1.0, pin_first_last=False))
    _train(method, epochs=4)
    bits = method.plan_bits()
    assert sum(bits.values()) / len(bits) <= 4.0
    assert bool(method.params.frozen)
    assert all(2 <= b <= 8 for b in bits.values()) and len(set(bits.values())) >= 1


@given(st.lists(st.floats(2.0, 8.0), min_size=2, max_size=2), st.floats(5.0, 7.9), st.sampled_from(["round", "ceil"]),
       st.sampled_from(["layers", "params"]))
def test_budget_always_met_by_the_integer_plan(beta, budget, rounding, weighting) -> None:
    method = WaveQ(_net(), WaveQConfig(budget=budget, rounding=rounding, weighting=weighting))
    with torch.no_grad():
        method.params.beta.copy_(torch.tensor(beta))
    bits = method.plan_bits()
    weights = method.counts if weighting == "params" else {n: 1 for n in bits}
    mean = sum(bits[n] * weights[n] for n in bits) / sum(weights.values())
    assert mean <= budget + 1e-9
    assert bits["0"] == 8 and bits["6"] == 8


def test_infeasible_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot be met"):
        WaveQ(_net(), WaveQConfig(budget=3.0))  # pins at 8: the lowest mean is (8+2+2+8)/4 = 5


def test_rounding_rule_table() -> None:
    cfg = WaveQConfig()
    assert integer_bits([2.5, 3.49, 3.5, 7.6, 2.0, 8.0, 4.5], cfg) == [3, 3, 4, 8, 2, 8, 5]  # half up
    assert integer_bits([2.01, 3.0, 3.5, 7.2], WaveQConfig(rounding="ceil")) == [3, 3, 4, 8]
    some = WaveQConfig(allowed_bits=(2, 4, 8))
    assert integer_bits([3.0, 2.9, 5.9, 6.0, 6.1], some) == [4, 2, 4, 8, 8]  # nearest allowed, ties up
    assert integer_bits([2.1, 4.0, 4.2], WaveQConfig(allowed_bits=(2, 4, 8), rounding="ceil")) == [4, 4, 8]


def test_freeze_at_the_phase_boundary() -> None:
    method = WaveQ(_net(), WaveQConfig())
    with torch.no_grad():
        method.params.beta.copy_(torch.tensor([3.4, 5.6]))
    method.step_callback(method.wrap(), 0.79)
    assert not bool(method.params.frozen)
    method.step_callback(method.wrap(), 0.8)
    assert bool(method.params.frozen)
    assert method.params.beta.tolist() == [3.0, 6.0]
    (method.penalty() + method.bit_pressure()).backward()
    assert method.params.beta.grad is None  # no more learning of bits in phase 3


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_sinusoid_is_zero_on_the_levels_at_integer_beta(family: str, k: int) -> None:
    spacing, offset = FAMILIES[family].weight.unit_geometry(torch.tensor([float(k)]))
    if family == "lsq":
        levels = torch.arange(-(2 ** (k - 1)), 2 ** (k - 1)) / 2 ** (k - 1)
    else:
        levels = (DoReFaWeight if family in ("dorefa", "pact") else WRPNWeight).levels(k)
    assert torch.allclose(sin2_grid(levels, spacing, offset), torch.zeros_like(levels), atol=1e-6)
    mid = (levels[:-1] + levels[1:]) / 2
    assert torch.allclose(sin2_grid(mid, spacing, offset), torch.ones_like(mid), atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_fixed_mode_is_sinreq(k: int) -> None:
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.clamp_(-0.9, 0.9)  # inside WRPN's unit range: the raw and aligned domains agree
    qnet = _net()
    qnet.load_state_dict(net.state_dict())
    quantize_(qnet, Plan.uniform(k), QuantizerSpec("wrpn", scale="none"))
    sinreq = SinReQ(qnet, domain="raw", multipliers={"0": 0.0, "6": 0.0})(qnet)
    fixed = WaveQConfig(quantizer="wrpn", learn_bits=False, learn_scale=False, beta_init=float(k),
                        normalize_bits=False, range_penalty=False)
    method = WaveQ(net, fixed)
    with torch.no_grad():
        method.params.alpha.fill_(1.0)
    assert torch.allclose(method.penalty(), sinreq, atol=1e-6)
    normalized = WaveQ(net, WaveQConfig(quantizer="wrpn", learn_bits=False, learn_scale=False, beta_init=float(k),
                                        range_penalty=False))
    with torch.no_grad():
        normalized.params.alpha.fill_(1.0)
    assert torch.allclose(normalized.penalty(), sinreq / 2**k, atol=1e-7)
    normalized.penalty().backward()
    assert normalized.params.beta.grad is None and normalized.params.alpha.grad is None


def test_range_term_charges_only_weights_beyond_the_outer_levels() -> None:
    net = _net()
    method = WaveQ(net, WaveQConfig(quantizer="wrpn", learn_bits=False, beta_init=2.0, normalize_bits=False))
    layer = method.layers[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([-1.0, 0.0, 1.0]).repeat(layer.weight.numel())[: layer.weight.numel()]
                           .view_as(layer.weight))
        method.params.alpha.fill_(1.0)
    assert float(method.layer_penalties()[0].detach()) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        layer.weight[0, 0] = 3.0  # two grid steps (Δ = 1) beyond the top level
    expected = 4.0 / layer.weight.numel()
    assert float(method.layer_penalties()[0].detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bad", [dict(bits_min=1), dict(bits_min=5, bits_max=4), dict(quantizer="pactt"),
                                 dict(budget=-1.0), dict(beta_init=9.0), dict(rounding="floor"),
                                 dict(lambda_w=math.nan), dict(allowed_bits=(1,))])
def test_bad_settings_are_clear_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        WaveQConfig(**bad)


def test_a_budget_exactly_at_the_lowest_mean_is_feasible() -> None:
    method = WaveQ(_net(), WaveQConfig(budget=5.0))  # (8 + 2 + 2 + 8) / 4, not refused by float32 rounding
    assert method.plan_bits() == {"0": 8, "2": 2, "4": 2, "6": 8}
    tenths = WaveQ(nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)]), WaveQConfig(budget=4.4))
    assert sum(tenths.plan_bits().values()) == 22


def test_aligned_dorefa_domain_puts_zeros_on_dorefas_own_levels() -> None:
    """tanh(w/α)/tanh(1) on a DoReFa level -> zero sinusoid; the raw domain w/α misses them."""
    net = _net()
    layer_levels = DoReFaWeight.levels(2).double()
    alpha = 0.5
    w = alpha * torch.atanh(layer_levels * math.tanh(1.0))  # DoReFa's levels mapped back to weight space
    for domain, zero in (("aligned", True), ("raw", False)):
        method = WaveQ(net, WaveQConfig(domain=domain, learn_bits=False, beta_init=2.0, normalize_bits=False,
                                        range_penalty=False))
        layer = method.layers[0]
        with torch.no_grad():
            layer.weight.copy_(w.float().repeat(layer.weight.numel())[: layer.weight.numel()].view_as(layer.weight))
            method.params.alpha.fill_(alpha)
        value = float(method.layer_penalties()[0].detach())
        assert (value < 1e-6) == zero, (domain, value)
