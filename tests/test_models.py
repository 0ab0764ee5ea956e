"""The float model zoo: registry behaviour and the hard contracts every registered model keeps.

Per-model tests are parametrized over ``list_models()``, so a newly registered model is checked
for free: it is an ``nn.Sequential`` chain, built from plain modules registered in forward order,
gives (N, num_classes) logits at every allowed size, scales with width_mult, is deterministic
under a seed, starts from a sensible init, and its ``min_input_size`` is the true minimum.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, UnknownNameError
from lowbit.models import ModelInfo, create_model, list_models, model_info, register_model
from lowbit.models import registry

MODELS = list_models()
EXPECTED = {
    "alexnet", "conv1d", "lenet5", "mobilenet", "resnet18", "resnet20", "simplenet", "svhnnet",
    "vgg11",
}
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
WITH_PARAMS = WEIGHTED + (nn.BatchNorm1d, nn.BatchNorm2d)
ALLOWED_LEAVES = WITH_PARAMS + (
    nn.ReLU, nn.Flatten, nn.Dropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)


def make_input(name: str, n: int = 2, in_channels: int | None = None, size: int | None = None):
    info = model_info(name)
    c = info.default_in_channels if in_channels is None else in_channels
    s = info.default_input_size if size is None else size
    return torch.randn((n, c, s, s) if info.kind == "image" else (n, c, s))


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, WEIGHTED)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- registry -------------------------------------------------------------------------------


def test_registry_lists_the_zoo_sorted() -> None:
    assert EXPECTED <= set(MODELS)
    assert MODELS == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_model_info_is_consistent_and_frozen(name: str) -> None:
    info = model_info(name)
    assert isinstance(info, ModelInfo) and info.name == name
    assert info.kind in ("image", "sequence")
    assert 1 <= info.min_input_size <= info.default_input_size
    assert info.default_in_channels >= 1 and info.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]
    builder_module = sys.modules[registry._BUILDERS[name].__module__]
    assert builder_module.__doc__, "every model file names its paper in a module docstring"


@pytest.mark.parametrize("lookup", [create_model, model_info])
def test_unknown_name_suggests_and_lists(lookup) -> None:
    with pytest.raises(UnknownNameError) as err:
        lookup("resnet21")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, KeyError)
    assert "did you mean 'resnet20'" in str(err.value) and "lenet5" in str(err.value)
    with pytest.raises(UnknownNameError):
        lookup(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"input_size": 11}, "input_size must be an integer >= 12"),
        ({"input_size": 28.0}, "input_size must be an integer >= 12"),
        ({"width_mult": 0}, "width_mult must be a finite number > 0"),
        ({"width_mult": -1.0}, "width_mult"),
        ({"width_mult": math.nan}, "width_mult"),
        ({"width_mult": True}, "width_mult"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"num_classes": True}, "num_classes"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
    ],
)
def test_invalid_arguments_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_model("lenet5", **kwargs)
    assert "'lenet5'" in str(err.value) and needle in str(err.value)


def test_register_model_decorator_and_defaults() -> None:
    seen = {}

    @register_model("_test_dummy", kind="sequence", default_input_size=16, min_input_size=4,
                    default_in_channels=2, description="dummy")
    def dummy(num_classes: int, in_channels: int, input_size: int, width_mult: float):
        seen.update(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                    width_mult=width_mult)
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size, num_classes))

    try:
        assert "_test_dummy" in list_models()
        create_model("_test_dummy")
        assert seen == {"num_classes": 10, "in_channels": 2, "input_size": 16, "width_mult": 1.0}
        create_model("_test_dummy", num_classes=3, in_channels=1, input_size=4, width_mult=2)
        assert seen == {"num_classes": 3, "in_channels": 1, "input_size": 4, "width_mult": 2.0}
        with pytest.raises(ValueError, match="already registered"):
            register_model("_test_dummy", kind="sequence", default_input_size=16,
                           min_input_size=4, default_in_channels=2, description="again")(dummy)
    finally:
        registry._BUILDERS.pop("_test_dummy", None)
        registry._INFOS.pop("_test_dummy", None)
    with pytest.raises(ValueError, match="kind"):
        register_model("_bad", kind="video", default_input_size=8, min_input_size=8,
                       default_in_channels=1, description="")
    assert "_test_dummy" not in list_models() and "_bad" not in list_models()


# --- contracts, for every registered model -------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_the_chain_of_top_level_children(name: str) -> None:
    model = create_model(name).eval()
    assert isinstance(model, nn.Sequential)
    x = make_input(name)
    with torch.no_grad():
        expected, out = model(x), x
        for child in model.children():
            out = child(out)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name", MODELS)
def test_built_from_plain_modules_registered_in_forward_order(name: str) -> None:
    info = model_info(name)
    model = create_model(name, in_channels=2, num_classes=7)
    all_modules = list(model.modules())
    assert len(all_modules) == len(list(model.modules(remove_duplicate=False))), "shared module"
    leaves = [m for m in all_modules if not list(m.children())]
    for m in leaves:
        assert isinstance(m, ALLOWED_LEAVES), f"{type(m).__name__} is not an allowed layer"
    for m in all_modules:  # weights live only in conv/linear/BN, never as raw parameters
        if list(m.parameters(recurse=False)):
            assert isinstance(m, WITH_PARAMS), f"raw parameter in {type(m).__name__}"
    first, last = weighted_layers(model)[0], weighted_layers(model)[-1]
    conv = nn.Conv2d if info.kind == "image" else nn.Conv1d
    assert isinstance(first, conv) and first.in_channels == 2
    assert isinstance(last, nn.Linear) and last.out_features == 7

    calls: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.append(mod)) for m in leaves]
    model.eval()(make_input(name, in_channels=2))
    for h in hooks:
        h.remove()
    assert [id(m) for m in calls] == [id(m) for m in leaves], "call order != registration order"


@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 10), (3, 7)])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_at_default_size(name: str, in_channels: int, num_classes: int) -> None:
    model = create_model(name, in_channels=in_channels, num_classes=num_classes)
    out = model(make_input(name, in_channels=in_channels))
    assert out.shape == (2, num_classes)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MODELS)
def test_forward_at_every_allowed_size(name: str) -> None:
    info = model_info(name)
    sizes = {info.min_input_size, info.default_input_size}
    if info.kind == "image":
        sizes |= {s for s in (8, 28, 32) if s >= info.min_input_size}
    for size in sorted(sizes):
        model = create_model(name, input_size=size, num_classes=5)
        out = model(make_input(name, size=size))
        assert out.shape == (2, 5) and torch.isfinite(out).all(), size


@pytest.mark.parametrize("name", MODELS)
def test_min_input_size_is_the_true_minimum(name: str) -> None:
    info = model_info(name)
    with pytest.raises(ConfigError, match=f">= {info.min_input_size}"):
        create_model(name, input_size=info.min_input_size - 1)
    if info.min_input_size > 1:  # the raw builder really fails one below the minimum
        with warnings.catch_warnings(), pytest.raises((RuntimeError, ValueError)):
            warnings.simplefilter("ignore")  # zero-size init warnings
            model = registry._BUILDERS[name](num_classes=10, in_channels=info.default_in_channels,
                                             input_size=info.min_input_size - 1, width_mult=1.0)
            model.eval()(make_input(name, size=info.min_input_size - 1))


@pytest.mark.parametrize("name", MODELS)
def test_width_mult_scales_hidden_layers_only(name: str) -> None:
    info = model_info(name)
    size = info.min_input_size if info.kind == "image" else info.default_input_size
    counts = []
    for width in (0.5, 1.0, 2.0):
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = create_model(name, input_size=size, width_mult=width, num_classes=7)
        layers = weighted_layers(model)
        assert layers[0].in_channels == info.default_in_channels
        assert layers[-1].out_features == 7
        counts.append(n_params(model))
    assert counts[0] < counts[1] < counts[2]
    tiny = create_model(name, width_mult=0.01, num_classes=7)  # every hidden width clamps to 1
    assert tiny(make_input(name)).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_construction_is_deterministic_under_seed(name: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return create_model(name, width_mult=0.25).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", MODELS)
def test_sensible_default_init(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, WEIGHTED):
            fan_in = m.weight[0].numel()
            std = m.weight.std().item() * math.sqrt(fan_in)
            assert 0.7 < std < 1.7, f"{m}: weight std * sqrt(fan_in) = {std:.2f}"
    with torch.no_grad():
        out = model.train()(make_input(name, n=4))
    assert torch.isfinite(out).all() and 0.1 < out.std().item() < 10
