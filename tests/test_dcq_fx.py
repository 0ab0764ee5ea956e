"""DCQ on any torch.fx-traceable model: a torchvision-style ResNet (written here, not imported), a
residual 1-D net and a depthwise-separable 2-D net written as plain modules are cut where one
tensor crosses, stitched back bitwise, and quantized end to end; cuts across a skip connection,
untraceable models and mode-dependent forwards are clear user errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.data import ArrayLoader, load_dataset
from lowbit.distill import (DCQConfig, TeacherFeatures, cut_points, dcq_quantize, make_students, split, split_points,
                            stitch)
from lowbit.errors import ConfigError
from lowbit.nn import layer_bits, quantize_, quantized_layers
from lowbit.nn.convert import quantizable_layers
from lowbit.plan import Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.train import TrainConfig


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the models: plain modules, as a user writes them -----------------------------------------

class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 conv-BN, a 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision-style: stem conv-BN-ReLU-maxpool, two stages of two blocks, avgpool, fc."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Residual1d(nn.Module):
    """A residual 1-D net; it registers its head before its body (registration order != call order)
    and reads a parameter of its own in forward (a ``get_attr`` node)."""

    def __init__(self, channels: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.head = nn.Linear(channels, num_classes)
        self.stem = nn.Conv1d(1, channels, 5, padding=2)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 3, padding=1) for _ in range(4))
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x):
        x = F.relu(self.stem(x))
        for i in range(0, 4, 2):
            x = x + self.convs[i + 1](F.relu(self.convs[i](x)))
            x = F.relu(x)
        return self.head(x.mean(dim=-1) * self.gain)


class DepthwiseSeparable(nn.Module):
    """A depthwise-separable 2-D net: 3x3 depthwise conv, BN, ReLU, 1x1 pointwise conv, BN, ReLU."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (8, 16, 16)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        blocks = []
        for cin, cout in zip(widths, widths[1:]):
            blocks.append(nn.ModuleDict({
                "dw": nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), "bn1": nn.BatchNorm2d(cin),
                "pw": nn.Conv2d(cin, cout, 1, bias=False), "bn2": nn.BatchNorm2d(cout)}))
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(block["bn1"](block["dw"](x)))
            x = F.relu(block["bn2"](block["pw"](x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = ResNet()
    _randomise_norms(model)
    return model.eval(), torch.randn(4, 3, 16, 16)


def _randomise_norms(model: nn.Module) -> None:
    """Running statistics away from (0, 1), so eval mode does something."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


MODELS = {
    "resnet": _resnet,
    "residual1d": lambda: (torch.manual_seed(0), Residual1d().eval(), torch.randn(4, 1, 32))[1:],
    "depthwise": lambda: (torch.manual_seed(0), DepthwiseSeparable().eval(), torch.randn(4, 3, 16, 16))[1:],
}


def _assert_stitch_is_the_model(model: nn.Module, sections: list[nn.Module], x: torch.Tensor) -> None:
    stitched = stitch(sections)
    assert isinstance(stitched, fx.GraphModule) and all(isinstance(s, fx.GraphModule) for s in sections)
    a, b = model.state_dict(), stitched.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same names, same order
    assert list(quantizable_layers(stitched)) == list(quantizable_layers(model))
    with torch.no_grad():
        expected = model(x.clone())
        assert torch.equal(stitched(x.clone()), expected)
        h = x.clone()
        for section in sections:  # the sections one after the other are the model's forward too
            h = section(h)
        assert torch.equal(h, expected)


# ---- split and stitch -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("k", [2, 3])
def test_balanced_split_stitches_back_bitwise(name: str, k: int) -> None:
    model, x = MODELS[name]()
    for balance in ("params", "macs"):
        sections = split(model, sections=k, balance=balance, sample_input=x)
        assert len(sections) == k
        points = split_points(sections)
        assert set(points) <= set(cut_points(model))
        _assert_stitch_is_the_model(model, sections, x)
        assert split_points(split(model, at=points)) == points  # the same cut again from its names
        _assert_stitch_is_the_model(model, split(stitch(sections), at=points), x)  # a stitched model splits too


def test_resnet_cut_points_are_between_blocks_and_balanced() -> None:
    model, x = _resnet()
    points = cut_points(model)
    # inside a stage between its blocks, between stages, before the head; never inside a block
    for name in ("layer1_0_conv1", "layer1_1_conv1", "layer2_0_conv1", "layer2_1_conv1", "avgpool", "fc"):
        assert name in points
    for name in ("layer1_0_bn1", "layer1_0_conv2", "layer2_0_downsample_0", "layer2_0_bn2", "add"):
        assert name not in points
    by_params = split_points(split(model, sections=2))
    by_macs = split_points(split(model, sections=2, balance="macs", sample_input=x))
    assert by_params == ["layer2_1_conv1"]  # stage 2's blocks hold 3/4 of the weights
    assert by_macs == ["layer2_0_conv1"]  # but at a quarter of the resolution


def test_split_at_named_nodes_and_module_paths() -> None:
    model, x = _resnet()
    sections = split(model, at=["layer1_1_conv1", "layer2"])  # a node, and a module path: its first operation
    assert split_points(sections) == ["layer1_1_conv1", "layer2_0_conv1"]
    assert sections[1].get_submodule("layer1.1.conv1") is model.layer1[1].conv1  # shared, not copied
    assert list(quantizable_layers(sections[2]))[:3] == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"]
    _assert_stitch_is_the_model(model, sections, x)


def test_a_cut_across_the_skip_connection_is_refused_naming_both_tensors() -> None:
    model, _ = _resnet()
    with pytest.raises(ConfigError, match=r"before node 'layer1_0_conv2': 2 tensors cross it: 'maxpool' \(used by "
                                          r"'add'\), 'layer1_0_relu' \(used by 'layer1_0_conv2'\)") as info:
        split(model, at=["layer1_0_conv2"])
    assert "nearest valid points: layer1_0_conv1, layer1_0_relu_1" in str(info.value)
    with pytest.raises(ConfigError, match=r"'layer1_1_relu_1' \(used by 'layer2_0_downsample_0'\), 'layer2_0_bn2' "
                                          r"\(used by 'add_2'\)"):
        split(model, at=["layer2.0.downsample"])  # the shortcut conv: the main path crosses it too


@pytest.mark.parametrize(("at", "message"), [
    (["conv9"], "unknown split point 'conv9' \\(did you mean 'conv1'\\?\\)"),
    (["conv1"], "first operation"),
    (["x"], "the model's placeholder, not an operation"),
    (["fc", "layer2"], "follow the order"),
    (["layer2", "layer2_0_conv1"], "repeat"),
    ([], "at least one split point"),
])
def test_bad_split_points_are_config_errors(at, message) -> None:
    model, _ = _resnet()
    with pytest.raises(ConfigError, match=message):
        split(model, at=at)


def test_too_many_sections_name_the_valid_points() -> None:
    model, _ = _resnet()
    with pytest.raises(ConfigError, match=r"into 20 sections: only 14 point\(s\) .* crossed by a single tensor"):
        split(model, sections=20)


# ---- models DCQ cannot cut --------------------------------------------------------------------

class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc1(x)
        if h.mean() > 0:  # data-dependent control flow
            h = h.relu()
        return self.fc2(h)


class ModeDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(F.dropout(self.fc1(x), 0.5, training=self.training))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.fc(torch.relu(self.fc(x))))


def test_an_untraceable_model_names_the_call_and_the_ways_out() -> None:
    with pytest.raises(ConfigError) as info:
        split(Gated(), sections=2)
    message = str(info.value)
    assert "cannot trace Gated with torch.fx" in message
    assert "Gated.forward" in message and "if h.mean() > 0:" in message  # the untraceable call, by line
    assert "control flow" in message  # torch.fx's own reason
    assert "split it by hand" in message and "nn.Sequential" in message
    with pytest.raises(ConfigError, match="cannot trace Gated"):
        dcq_quantize(Gated(), [], sections=2)


def test_other_models_dcq_cannot_cut_are_refused() -> None:
    with pytest.raises(ConfigError, match="different operations in training and in eval mode"):
        split(ModeDependent(), sections=2)
    with pytest.raises(ConfigError, match="'fc' is used in sections 1 and 2"):
        split(Tied(), at=["relu"])

    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(ConfigError, match="must take one input; TwoInputs.forward takes 2"):
        split(TwoInputs(), sections=2)
    with pytest.raises(ConfigError, match="not the one tensor"):
        stitch([_tuple_section(), _tuple_section()])


def _tuple_section() -> fx.GraphModule:
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    return fx.symbolic_trace(Pair())


# ---- DCQ end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
    data = load_dataset("synthetic", seed=0, kind="image", in_channels=3, input_size=16, n_train=128, n_test=64)
    train = ArrayLoader(data.train, batch_size=32, shuffle=True, seed=0, mean=data.mean, std=data.std)
    test = ArrayLoader(data.test, batch_size=64, shuffle=False, mean=data.mean, std=data.std)
    return train, test


def _config(**kw) -> DCQConfig:
    return DCQConfig(**{"train": TrainConfig(epochs=1, lr=0.01), **kw})


def test_students_carry_the_plan_quantize_gives_the_whole_model() -> None:
    model, _ = MODELS["residual1d"]()
    plan = Plan.uniform(2).with_entries(*Plan.from_layer_bits({"convs.2": 4}).entries)  # an original layer name
    spec = QuantizerSpec("dorefa", scale="auto")
    expected = quantize_(copy.deepcopy(model), plan, spec)
    assert list(expected)[0] == "head"  # registration order: the head is the "first" layer (pinned)
    students, bits = make_students(split(model, sections=3), plan, spec)
    assert bits == dict(expected)
    assert bits["convs.2"].weight == 4 and bits["head"].weight == 8 and bits["convs.3"].weight == 8
    stitched = stitch(students)
    assert layer_bits(stitched) == expected
    assert all(layer.layer_name == name for name, layer in quantized_layers(stitched).items())
    assert not quantized_layers(model)  # the teacher stays float


def test_dcq_quantizes_a_resnet_end_to_end(images) -> None:
    train, test = images
    teacher, _ = _resnet()
    before = copy.deepcopy(teacher.state_dict())
    result = dcq_quantize(teacher, train, plan=Plan.uniform(2), quantizer="dorefa", sections=3, balance="macs",
                          sample_input=torch.zeros(1, 3, 16, 16), config=_config(), eval_loader=test)
    assert isinstance(result.model, fx.GraphModule) and len(result.students) == 3
    assert result.split_at == split_points(split(teacher, sections=3, balance="macs",
                                                 sample_input=torch.zeros(1, 3, 16, 16)))
    assert list(quantized_layers(result.model)) == list(quantizable_layers(teacher))  # every layer, its own name
    assert result.bits == dict(quantize_(copy.deepcopy(teacher), Plan.uniform(2), "dorefa"))
    assert all(s.history and s.final_loss == s.final_loss for s in result.sections)
    assert [s.layers for s in result.sections] == [list(quantizable_layers(s)) for s in result.students]
    assert 0.0 <= result.accuracy <= 1.0
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not quantized_layers(teacher)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        result.model.eval()
        h = x
        for student in result.students:
            h = student(h)
        assert torch.equal(h, result.model(x))


def test_teacher_features_keep_a_boundary_an_in_place_relu_reads(images, tmp_path) -> None:
    train, _ = images
    model, _ = _resnet()
    sections = split(model, at=["relu"])  # the next section starts with ReLU(inplace=True) on the boundary
    x, _ = next(iter(train))
    features = TeacherFeatures(sections, train)
    with torch.no_grad():
        expected = model.bn1(model.conv1(x))
    boundary = features.teacher_outputs(x, 2)[0]
    assert torch.equal(boundary, expected) and (boundary < 0).any()
    cached = TeacherFeatures(sections, train, cache_dir=tmp_path / "cache")
    for index in (0, 1):
        for (a, b, c), (d, e, f) in zip(features.batches(index, 0), cached.batches(index, 0)):
            assert torch.equal(a, d) and torch.equal(b, e) and torch.equal(c, f)


@pytest.mark.slow
def test_parallel_workers_match_one_process_bitwise() -> None:
    teacher, _ = MODELS["residual1d"]()  # its layers registered out of call order: workers must keep that order
    data = load_dataset("synthetic", seed=0, kind="sequence", input_size=32, n_train=128, n_test=64)
    train = ArrayLoader(data.train, batch_size=32, shuffle=True, seed=0, mean=data.mean, std=data.std)
    test = ArrayLoader(data.test, batch_size=64, shuffle=False, mean=data.mean, std=data.std)
    kw = dict(plan=Plan.uniform(2), quantizer="dorefa", sections=3, eval_loader=test)
    single = dcq_quantize(teacher, train, config=_config(), **kw)
    parallel = dcq_quantize(teacher, train, config=_config(workers=2), **kw)
    a, b = single.model.state_dict(), parallel.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [s.to_dict()["losses"] for s in single.sections] == [s.to_dict()["losses"] for s in parallel.sections]
    assert [s.layers for s in single.sections] == [s.layers for s in parallel.sections]
    assert single.accuracy == parallel.accuracy
