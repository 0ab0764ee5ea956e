"""``quantize_`` / ``dequantize_`` on user-defined models (no model zoo)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from lowbit.errors import BitwidthError, PlanError, UnknownNameError
from lowbit.nn import (QuantConv1d, QuantConv2d, QuantLayer, QuantLinear, dequantize_, followed_by_norm, layer_bits,
                       quantizable_layers, quantize_, quantized_layers, quantizer_aux_loss)
from lowbit.plan import LayerBits, Plan, PlanEntry
from lowbit.quant import FAMILIES, LSQAct, PACTAct, Quantizer, QuantizerSpec


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1, groups=4)
        self.conv3 = nn.Conv1d(8, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(torch.relu(self.conv3(x)).mean(-1))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)  # depthwise
        self.bn = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1, groups=2)  # grouped, no norm after it

    def forward(self, x):
        return x + self.pw(torch.relu(self.bn(self.dw(x))))


class GroupNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.classifier = nn.Linear(8, 10)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.classifier(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.hidden = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(torch.relu(self.fc1(x)))))


MODELS = {
    "conv1d": (Conv1dNet, (6, 3, 10), {"conv1"}),
    "groups": (GroupNet, (6, 3, 6, 6), {"stem", "blocks.0.dw", "blocks.1.dw"}),
    "mlp": (MLP, (6, 12), set()),
}
FLOAT_TYPES = {QuantConv1d: nn.Conv1d, QuantConv2d: nn.Conv2d, QuantLinear: nn.Linear}


def build(kind: str, seed: int = 0):
    cls, shape, _ = MODELS[kind]
    torch.manual_seed(seed)
    model = cls()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + seed))
    return model, x


def modules_snapshot(model):
    return [(name, id(m)) for name, m in model.named_modules()], sorted(model.state_dict())


def train_step(model, x, opt=None):
    model.train()
    out = model(x)
    loss = out.square().mean() + quantizer_aux_loss(model)
    if opt is not None:
        opt.zero_grad()
    loss.backward()
    if opt is not None:
        opt.step()
    return out


# ---- quantize_: forward, backward, bits -----------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_quantize_forward_backward_and_bits(kind, family):
    model, x = build(kind)
    names = list(quantizable_layers(model))
    middle = names[1]
    plan = Plan.uniform(2, 4).with_entries(PlanEntry(middle, 3, 5))
    resolved = quantize_(model, plan, family)

    assert resolved == plan.resolve(names)
    assert layer_bits(model) == resolved
    assert resolved[names[0]] == LayerBits(8, 32) and resolved[names[-1]] == LayerBits(8, 8)
    assert resolved[middle] == LayerBits(3, 5)
    assert all(resolved[n] == LayerBits(2, 4) for n in names[2:-1])
    assert list(quantized_layers(model)) == names
    for name, m in quantized_layers(model).items():
        assert isinstance(m, FLOAT_TYPES[type(m)]) and m.layer_name == name
        assert m.weight_quantizer.family == family and m.weight_quantizer.bits == resolved[name].weight
        if resolved[name].act == 32:
            assert m.input_quantizer is None
        else:
            assert m.input_quantizer.family == family and m.input_quantizer.bits == resolved[name].act
        assert torch.unique(m.effective_weight().detach()).numel() <= 2 ** resolved[name].weight

    out = train_step(model, x)
    assert torch.isfinite(out).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in (names[0], names[-1]):  # (a paper-exact 2-bit middle layer may round to all zeros)
        assert model.get_submodule(name).weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_default_plan_is_uniform_4_bit_weights(kind):
    model, _ = build(kind)
    names = list(quantizable_layers(model))
    resolved = quantize_(model)
    assert resolved[names[0]] == LayerBits(8, 32) and resolved[names[-1]] == LayerBits(8, 8)
    assert all(resolved[n] == LayerBits(4, 32) for n in names[1:-1])
    assert all(m.weight_quantizer.family == "dorefa" for m in quantized_layers(model).values())


def test_float_model_layer_bits():
    model, _ = build("groups")
    assert set(layer_bits(model).values()) == {LayerBits(32, 32)}
    assert not quantized_layers(model)


# ---- shadow weights, optimizer, re-application -----------------------------------------------

@pytest.mark.parametrize("kind", sorted(MODELS))
def test_float_parameters_are_kept_and_an_earlier_optimizer_updates_them(kind):
    model, x = build(kind)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    quantize_(model, Plan.uniform(3, 4), "wrpn")
    for name, p in params.items():
        assert model.get_parameter(name) is p, name
    before = {name: p.detach().clone() for name, p in params.items()}
    train_step(model, x, opt)
    for name in quantizable_layers(model):
        assert not torch.equal(model.get_parameter(name + ".weight"), before[name + ".weight"]), name


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_reapplying_replaces_the_quantizers(kind):
    model, x = build(kind)
    params = dict(model.named_parameters())
    quantize_(model, Plan.uniform(2, 4), "pact")
    keys = sorted(model.state_dict())
    scales = {n: m.weight_quantizer.scale_mode for n, m in quantized_layers(model).items()}
    norms = followed_by_norm(model)
    quantize_(model, Plan.uniform(3, 5), "pact")
    assert sorted(model.state_dict()) == keys
    assert {n: m.weight_quantizer.scale_mode for n, m in quantized_layers(model).items()} == scales
    assert followed_by_norm(model) == norms == MODELS[kind][2]
    for m in model.modules():  # no quantized layer or quantizer nested inside a quantizer
        if isinstance(m, Quantizer):
            assert not any(isinstance(c, (QuantLayer, Quantizer)) for c in m.modules() if c is not m)
    assert {b.weight for n, b in layer_bits(model).items()} == {8, 3}
    for name, p in params.items():
        assert model.get_parameter(name) is p
    quantize_(model, Plan.uniform(4), "lsq")  # another family replaces as well
    assert all(m.weight_quantizer.family == "lsq" for m in quantized_layers(model).values())
    assert not any(isinstance(m, PACTAct) for m in model.modules())
    assert torch.isfinite(train_step(model, x)).all()


# ---- dequantize_ ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_dequantize_restores_the_float_model(kind, family):
    model, x = build(kind)
    reference = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    quantize_(model, Plan.uniform(2, 3), family)
    model.eval()
    assert not torch.equal(model(x), reference(x))
    dequantize_(model)
    assert not quantized_layers(model)
    for name, m in quantizable_layers(model).items():
        assert type(m) is type(reference.get_submodule(name))
    assert dict(model.named_parameters()) == params  # the very same Parameter objects
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_dequantize_bake_reproduces_the_quantized_model(kind, family):
    model, x = build(kind)
    train_step(model, x)  # (BN statistics, LSQ init)
    quantize_(model, Plan(LayerBits(2, 32), LayerBits(8, 32)), family)
    model.eval()
    expected = model(x)
    shadow = {name: m.weight.detach().clone() for name, m in quantized_layers(model).items()}
    dequantize_(model, bake=True)
    assert not quantized_layers(model)
    assert all(type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear) for m in quantizable_layers(model).values())
    assert torch.equal(model(x), expected)
    for name, m in quantizable_layers(model).items():
        assert torch.unique(m.weight).numel() <= 2 ** (8 if name in (list(shadow)[0], list(shadow)[-1]) else 2)
        assert not torch.equal(m.weight, shadow[name])


# ---- errors leave the model unchanged -------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(MODELS))
def test_invalid_bits_for_the_quantizer_change_nothing(kind):
    model, x = build(kind)
    names = list(quantizable_layers(model))
    snapshot = modules_snapshot(model)
    with pytest.raises(BitwidthError, match=f"lsq bitwidth 1 for layer '{names[1]}'"):
        quantize_(model, Plan.uniform(1), "lsq")
    assert modules_snapshot(model) == snapshot
    quantize_(model, Plan.uniform(3, 4), "dorefa")
    model.eval()
    out = model(x)
    snapshot = modules_snapshot(model)
    with pytest.raises(BitwidthError, match=names[1]):
        quantize_(model, Plan.uniform(4).with_entries(PlanEntry(names[1], 1)), "lsq")
    with pytest.raises(PlanError, match="nosuchlayer"):
        quantize_(model, Plan.uniform(2).with_entries(PlanEntry("nosuchlayer", 2)), "lsq")
    with pytest.raises(UnknownNameError, match="dorefo"):
        quantize_(model, Plan.uniform(2), "dorefo")
    assert modules_snapshot(model) == snapshot
    assert torch.equal(model(x), out)


def test_quantizer_none():
    model, x = build("groups")
    with pytest.raises(BitwidthError, match="quantizer 'none'.*'stem'"):
        quantize_(model, Plan.uniform(4), "none")
    assert not quantized_layers(model)
    quantize_(model, Plan.uniform(4), "dorefa")
    assert quantize_(model, Plan(first_last=None), "none") == layer_bits(model)
    assert not quantized_layers(model)  # an all-float plan with 'none' gives the float model back


# ---- output scale: auto ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(MODELS))
def test_auto_scale_follows_batch_norm(kind):
    model, _ = build(kind)
    normed = MODELS[kind][2]
    assert followed_by_norm(model) == normed
    quantize_(model, Plan.uniform(3, 4), "dorefa")
    for name, m in quantized_layers(model).items():
        assert m.weight_quantizer.scale_mode == ("none" if name in normed else "max"), name
    quantize_(model, Plan.uniform(3, 4), "wrpn")  # WRPN's unit range is not scale-free: never "none"
    for name, m in quantized_layers(model).items():
        assert m.weight_quantizer.scale_mode == ("learned" if name in normed else "max"), name
    quantize_(model, Plan.uniform(3, 4), QuantizerSpec("wrpn", scale="learned"))
    assert {m.weight_quantizer.scale_mode for m in quantized_layers(model).values()} == {"learned"}
    for family in ("lsq", "twn"):  # no output scale
        quantize_(model, Plan.uniform(3, 4), QuantizerSpec(family, scale="max"))
        assert {m.weight_quantizer.scale_mode for m in quantized_layers(model).values()} == {"none"}


def test_followed_by_norm_uses_the_next_leaf():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),  # activation in between
                          nn.Conv2d(4, 4, 3), nn.Sequential(nn.GroupNorm(2, 4)),  # nested norm
                          nn.Linear(4, 4), nn.LayerNorm(4), nn.Conv1d(4, 4, 1))
    assert followed_by_norm(model) == {"3", "5"}


# ---- state, training mode, aux loss ---------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", ["groups", "mlp"])
def test_state_dict_round_trip_into_a_fresh_quantized_copy(kind, family, tmp_path):
    spec = QuantizerSpec(family, scale="learned")
    plan = Plan.uniform(3, 4)
    model, x = build(kind, seed=0)
    quantize_(model, plan, spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_step(model, x, opt)
    train_step(model, x, opt)
    model.eval()
    expected = model(x)
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)

    fresh, _ = build(kind, seed=1)
    quantize_(fresh, plan, spec)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    buf = io.BytesIO()
    torch.save(fresh.state_dict(), buf)
    assert sorted(fresh.state_dict()) == sorted(model.state_dict())


def test_quantizers_follow_the_model_training_mode():
    model, x = build("mlp")
    model.eval()
    quantize_(model, Plan.uniform(3, 4), "lsq")
    assert not any(m.training for m in model.modules())
    model(x)
    for m in model.modules():
        if isinstance(m, LSQAct):
            assert not bool(m.initialized)  # eval mode never initialises the step
    model.train()
    model(x)
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, LSQAct))


def test_quantizer_aux_loss():
    model, x = build("groups")
    assert quantizer_aux_loss(model).item() == 0.0
    quantize_(model, Plan.uniform(3, 4), QuantizerSpec("pact", pact_alpha_init=2.0, pact_alpha_decay=0.01))
    acts = [m for m in model.modules() if isinstance(m, PACTAct)]
    assert len(acts) == len(quantizable_layers(model)) - 1  # the first layer's input stays float
    loss = quantizer_aux_loss(model)
    assert loss.item() == pytest.approx(len(acts) * 0.5 * 0.01 * 4.0)
    loss.backward()
    assert all(m.alpha.grad.item() == pytest.approx(0.01 * 2.0) for m in acts)
    quantize_(model, Plan(LayerBits(3, 32), LayerBits(8, 32)), "pact")  # no activation quantizers, no alpha
    assert quantizer_aux_loss(model).item() == 0.0
    quantize_(model, Plan.uniform(3, 4), "dorefa")
    assert quantizer_aux_loss(model).item() == 0.0
