"""SearchSpace: layers, pins, action decoding, plans, keys and bit averages (lowbit.search.space)."""

from __future__ import annotations

import ast
import copy
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.costs import costs_of, model_costs, weight_counts
from lowbit.errors import BitwidthError, ConfigError
from lowbit.models import create_model
from lowbit.nn.convert import layer_bits, quantizable_layers, quantize_
from lowbit.plan import LayerBits, Plan
from lowbit.search import SearchSpace
from search_support import small_model, small_space

SEARCH_SRC = Path(__file__).resolve().parents[1] / "src" / "lowbit" / "search"


def test_layers_and_features() -> None:
    space = small_space()
    assert space.layer_names == ("0", "2", "5", "7")
    assert space.searched_names == ("2", "5")
    rows = [(l.kind, l.out_channels, l.in_channels, l.kernel_size, l.params) for l in space.layers]
    assert rows == [("conv2d", 4, 1, 9, 36), ("conv2d", 8, 4, 9, 288), ("linear", 16, 128, 0, 2048),
                    ("linear", 10, 16, 0, 160)]
    model = small_model()
    for info, module in zip(space.layers, quantizable_layers(model).values()):
        assert info.weight_std == pytest.approx(float(module.weight.detach().std(correction=0)))
    assert (space.n_actions, space.n_plans, space.b_min, space.b_max) == (5, 25, 2, 8)


def test_unpinned_and_joint_sizes() -> None:
    assert small_space(pin_first_last=False).searched_names == ("0", "2", "5", "7")
    joint = small_space(search_acts=True, act_choices=(4, 8))
    assert joint.n_actions == 10 and joint.n_plans == 10 * 10
    unpinned = small_space(search_acts=True, pin_first_last=False)
    # the first layer's input stays float: 5 distinct plans for it, 25 for each of the other three
    assert unpinned.n_plans == 5 * 25 ** 3


@pytest.mark.parametrize("bad", [(2, 9), (0, 4), (4, 32), (2.5,), ("4",)])
def test_bad_bit_choices_raise_bitwidth_error(bad) -> None:
    with pytest.raises(BitwidthError):
        small_space(bit_choices=bad)


@pytest.mark.parametrize("bad, match", [((), "at least one"), ((2, 4, 2), "more than once")])
def test_empty_or_duplicate_choices_raise_config_error(bad, match) -> None:
    with pytest.raises(ConfigError, match=match):
        small_space(bit_choices=bad)
    with pytest.raises(ConfigError, match=match):
        small_space(search_acts=True, act_choices=bad)


def test_nothing_to_search() -> None:
    with pytest.raises(ConfigError, match="pin_first_last=False"):
        SearchSpace.from_model(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(ConfigError, match="no quantizable layer"):
        SearchSpace.from_model(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError, match="search_acts"):
        small_space(act_choices=(4, 8))


def _all_single_layer_variations(space: SearchSpace):
    """Every action on every searched layer, the other layers at the largest choices."""
    base = list(space.uniform())
    for i in range(space.n_searched):
        for action in range(space.n_actions):
            choices = list(base)
            choices[i] = space.decode(action)
            yield action, choices


@pytest.mark.parametrize("kwargs", [{}, {"search_acts": True}, {"pin_first_last": False},
                                    {"search_acts": True, "pin_first_last": False, "act_choices": (3, 8)},
                                    {"act_bits": 8}])
def test_every_action_decodes_to_a_valid_plan(kwargs) -> None:
    space = small_space(**kwargs)
    names = list(space.layer_names)
    for action, choices in _all_single_layer_variations(space):
        assert space.encode(space.decode(action)) == action
        plan = space.to_plan(choices)
        resolved = plan.resolve(names)
        assert resolved == space.resolved(choices)
        assert resolved["0"].act == 32  # the network input stays float
        if space.pin_first_last:
            assert resolved["0"].weight == resolved["7"].weight == 8
            assert resolved["7"].act == (8 if space.search_acts else space.act_bits)
        assert Plan.from_dict(plan.to_dict()).resolve(names) == resolved
        assert space.choices_from_key(space.key(choices)) == space.normalize(choices)


def test_decode_weights_only_and_joint() -> None:
    assert [small_space().decode(a) for a in range(5)] == [(2, 32), (3, 32), (4, 32), (5, 32), (8, 32)]
    joint = small_space(search_acts=True, act_choices=(8, 4))  # choices are sorted
    assert [joint.decode(a) for a in range(4)] == [(2, 4), (2, 8), (3, 4), (3, 8)]
    with pytest.raises(ConfigError):
        joint.decode(10)


def test_first_layer_act_is_canonical() -> None:
    space = small_space(search_acts=True, pin_first_last=False)
    a = [(2, 4), (2, 4), (2, 4), (2, 4)]
    b = [(2, 8), (2, 4), (2, 4), (2, 4)]
    assert space.key(a) == space.key(b) == "2/32,2/4,2/4,2/4"


def test_normalize_rejects_bad_choices() -> None:
    space = small_space()
    assert space.normalize([4, (2, 32)]) == ((4, 32), (2, 32))
    for bad in ([4], [4, 6], [4, (2, 8)], "44"):
        with pytest.raises((ConfigError, BitwidthError)):
            space.normalize(bad)
    with pytest.raises(ConfigError, match="pair"):
        small_space(search_acts=True).normalize([4, 4])


def test_plan_quantizes_the_model_as_resolved() -> None:
    space = small_space(search_acts=True)
    for choices in [space.uniform(), [(2, 3), (5, 2)], [(3, 8), (2, 2)]]:
        model = copy.deepcopy(small_model())
        quantize_(model, space.to_plan(choices), "dorefa")
        assert dict(layer_bits(model)) == dict(space.resolved(choices))
        assert model_costs(model).avg_bits == pytest.approx(space.avg_bits(choices))
        assert model_costs(model).weighted_bits == pytest.approx(space.weighted_bits(choices))


def test_avg_bits_counts_pinned_layers() -> None:
    space = small_space()
    # pins at 8: (8 + 2 + 2 + 8) / 4 = 5; weighted (36*8 + 288*2 + 2048*2 + 160*8) / 2532 = 6240 / 2532
    assert space.avg_bits([2, 2]) == 5.0
    assert space.weighted_bits([2, 2]) == pytest.approx(6240 / 2532)
    counts = weight_counts(small_model())
    for choices in itertools.product((2, 3, 4, 5, 8), repeat=2):
        expected = costs_of(counts, space.to_plan(choices).resolve(list(counts)))
        assert space.avg_bits(choices) == expected.avg_bits
        assert space.weighted_bits(choices) == expected.weighted_bits


def test_quant_state_by_hand() -> None:
    space = small_space()
    assert space.quant_state(space.normalize([8, 8])) == 1.0
    assert space.quant_state(space.normalize([2, 2])) == 2 / 8  # = b_min / b_max
    assert space.quant_state(space.normalize([4, 2])) == (4 + 2) / (8 * 2)
    # weighted by parameters: (288*4 + 2048*2) / (8 * (288 + 2048))
    assert space.quant_state(space.normalize([4, 2]), weighted=True) == pytest.approx(5248 / 18688)
    joint = small_space(search_acts=True)
    assert joint.quant_state(joint.normalize([(4, 2), (2, 3)])) == (4 + 2 + 2 + 3) / (8 * 4)


def test_lenet5_space() -> None:
    model = create_model("lenet5")
    space = SearchSpace.from_model(model)
    names = list(quantizable_layers(model))
    assert space.searched_names == tuple(names[1:-1])
    plan = space.to_plan(space.uniform(2))
    assert set(plan.resolve(names).values()) == {LayerBits(8, 32), LayerBits(2, 32)}
    quantize_(model, plan)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_search_package_does_not_import_stable_baselines() -> None:
    for path in sorted(SEARCH_SRC.rglob("*.py")):
        if path.name == "releq.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("stable_baselines3", "sb3_contrib"), f"{path.name} imports {name}"


def test_direct_construction_checks_the_pins() -> None:
    layers = small_space().layers
    assert SearchSpace(layers).searched_names == ("2", "5")
    with pytest.raises(ConfigError, match="pinned"):
        SearchSpace(layers, pin_first_last=False)
