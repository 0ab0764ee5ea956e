"""DCQ sections: split/stitch are exact for every registered model, automatic splits are balanced,
and wrong split points are clear user errors."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from lowbit.distill import auto_split_points, child_names, mac_costs, split, split_points, stitch
from lowbit.distill.sections import _balanced_cuts
from lowbit.errors import ConfigError
from lowbit.models import create_model, list_models, model_info
from lowbit.nn import layer_bits, quantize_
from lowbit.plan import Plan


def _model_and_input(name: str) -> tuple[nn.Module, torch.Tensor]:
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, width_mult=0.25)
    spatial = 2 if info.kind == "image" else 1
    x = torch.randn(3, info.default_in_channels, *([info.default_input_size] * spatial))
    return model, x


def _assert_same(model: nn.Module, other: nn.Module, x: torch.Tensor) -> None:
    a, b = model.state_dict(), other.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", list_models())
def test_stitch_of_split_is_the_model_exactly(name: str, k: int) -> None:
    torch.set_num_threads(1)
    model, x = _model_and_input(name)
    model.eval()
    for balance in ("params", "macs"):
        sections = split(model, sections=k, balance=balance, sample_input=x)
        assert len(sections) == k
        stitched = stitch(sections)
        assert child_names(stitched) == child_names(model)
        _assert_same(model, stitched, x)
        with torch.no_grad():  # running the sections one after the other is the model's forward
            h = x
            for section in sections:
                h = section(h)
            assert torch.equal(h, model(x))
        # the same cut again from its split points
        _assert_same(model, stitch(split(model, at=split_points(sections))), x)


def test_stitch_of_split_keeps_a_quantized_model_and_its_plan() -> None:
    model, x = _model_and_input("resnet20")
    quantize_(model, Plan.uniform(2, 4), "dorefa")
    model.eval()
    stitched = stitch(split(model, sections=3))
    assert layer_bits(stitched) == layer_bits(model)
    _assert_same(model, stitched, x)


def test_every_child_can_be_its_own_section() -> None:
    model, x = _model_and_input("lenet5")
    model.eval()
    names = child_names(model)
    sections = split(model, sections=len(names))
    assert [child_names(s) for s in sections] == [[n] for n in names]
    _assert_same(model, stitch(sections), x)


def test_automatic_cuts_fall_before_weighted_layers() -> None:
    model, x = _model_and_input("conv1d")  # conv1 bn1 relu1 conv2 ... flatten fc4
    for k in (2, 3, 4):
        for balance in ("params", "macs"):
            points = auto_split_points(model, k, balance, sample_input=x)
            assert all(p.startswith(("conv", "fc")) for p in points), points


def test_split_at_names_start_new_sections() -> None:
    model, _ = _model_and_input("lenet5")
    sections = split(model, at=["conv2", "fc3"])
    assert [child_names(s)[0] for s in sections] == ["conv1", "conv2", "fc3"]
    assert child_names(sections[0]) == ["conv1", "relu1", "pool1"]
    assert sections[1].conv2 is model.conv2  # shared, not copied


@pytest.mark.parametrize("seed", range(20))
def test_balanced_cuts_minimise_the_sum_of_squares(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 9, (1,), generator=gen))
    costs = torch.randint(0, 50, (n,), generator=gen).tolist()
    for k in range(1, n + 1):
        def score(cuts):
            bounds = [0, *cuts, n]
            return sum(sum(costs[a:b]) ** 2 for a, b in zip(bounds, bounds[1:]))
        best = min(score(c) for c in itertools.combinations(range(1, n), k - 1))
        cuts = _balanced_cuts(costs, k)
        assert len(cuts) == k - 1 and cuts == sorted(set(cuts))
        assert score(cuts) == best


def test_mac_counts_by_hand() -> None:
    model = create_model("lenet5")  # 28x28: conv1 6@5x5 pad 2, conv2 16@5x5 on 14x14, fc 400-120-84-10
    macs = dict(zip(child_names(model), mac_costs(model, torch.zeros(2, 1, 28, 28))))
    assert macs["conv1"] == 28 * 28 * 6 * 25
    assert macs["conv2"] == 10 * 10 * 16 * 6 * 25
    assert (macs["fc3"], macs["fc4"], macs["fc5"]) == (400 * 120, 120 * 84, 84 * 10)
    assert macs["relu1"] == macs["pool1"] == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"at": ["conv3"]}, "did you mean 'conv2'"),
    ({"at": ["conv1"]}, "first child"),
    ({"at": ["fc3", "conv2"]}, "follow the model's order"),
    ({"at": ["conv2", "conv2"]}, "repeat"),
    ({"at": []}, "at least one split point"),
    ({"sections": 13}, "only 12 top-level children"),
    ({"sections": 0}, "integer >= 1"),
    ({"sections": 2, "balance": "param"}, "did you mean 'params'"),
    ({"sections": 2, "balance": "macs"}, "sample input"),
    ({"at": ["conv2"], "sections": 2}, "not both"),
    ({}, "either split points"),
])
def test_bad_split_requests_are_config_errors(kwargs, message) -> None:
    model, _ = _model_and_input("lenet5")
    with pytest.raises(ConfigError, match=message):
        split(model, **kwargs)


def test_nested_names_and_custom_forwards_are_refused() -> None:
    model, _ = _model_and_input("resnet20")
    with pytest.raises(ConfigError, match="inside 'layer1_0'"):
        split(model, at=["layer1_0.conv1"])

    class Residual(nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    # a Sequential with its own forward is traced (tests/test_dcq_fx.py): here the skip crosses every point
    with pytest.raises(ConfigError, match="crossed by more than one tensor"):
        split(Residual(nn.Linear(2, 2), nn.ReLU()), sections=2)
    with pytest.raises(ConfigError, match=r"before node '_1': 2 tensors cross it: 'x' \(used by 'add'\)"):
        split(Residual(nn.Linear(2, 2), nn.ReLU()), at=["1"])
    with pytest.raises(ConfigError, match="more than one section"):
        stitch([nn.Sequential(nn.ReLU()), nn.Sequential(nn.ReLU())])  # both children are named "0"


def test_split_does_not_change_the_model() -> None:
    model, x = _model_and_input("mobilenet")
    before = copy.deepcopy(model).eval()
    split(model, sections=3, balance="macs", sample_input=x)
    assert model.training  # the MAC probe restores the mode
    _assert_same(before, model.eval(), x)
