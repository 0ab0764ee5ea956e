"""DCQ training (Python API): students carry the full model's plan, independent sections do not
depend on the order they are trained in nor on the process that trains them, feature losses
fall, cached teacher features equal on-the-fly ones, and the API takes a user's own model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit.data import ArrayLoader, load_dataset
from lowbit.distill import (DCQConfig, TeacherFeatures, dcq_quantize, feature_rms, kd_loss, make_students,
                            section_loss, split, stitch, train_section)
from lowbit.distill.dcq import SectionJob
from lowbit.errors import ConfigError
from lowbit.models import create_model
from lowbit.nn import layer_bits, quantize_, quantized_layers
from lowbit.plan import Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.train import TrainConfig, evaluate, fit


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise comparisons with worker processes (which use one thread)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    """A briefly trained conv1d teacher on small synthetic sequences, and its loaders."""
    data = load_dataset("synthetic", seed=0, kind="sequence", input_size=40, n_train=384, n_test=128)
    train = ArrayLoader(data.train, batch_size=64, shuffle=True, seed=0, mean=data.mean, std=data.std)
    test = ArrayLoader(data.test, batch_size=128, shuffle=False, mean=data.mean, std=data.std)
    torch.manual_seed(0)
    teacher = create_model("conv1d", in_channels=1, input_size=40, width_mult=0.5)
    fit(teacher, train, TrainConfig(epochs=2, lr=0.05))
    return teacher.eval(), train, test


def config(**kw) -> DCQConfig:
    return DCQConfig(**{"train": TrainConfig(epochs=1, lr=0.01), **kw})


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _losses(result) -> list[list[dict]]:
    """Every section's per-epoch records without their timings."""
    return [[{k: v for k, v in r.items() if k != "epoch_s"} for r in s.history] for s in result.sections]


def test_students_carry_the_plan_quantize_gives_the_whole_model(setup) -> None:
    teacher = setup[0]
    reference = copy.deepcopy(teacher)
    spec = QuantizerSpec("dorefa", scale="auto")
    expected = quantize_(reference, Plan.uniform(2, 4), spec)
    # cut between conv2 and its batch norm: conv2's 'auto' output scale must still see the norm
    students, bits = make_students(split(teacher, at=["bn2", "conv3"]), Plan.uniform(2, 4), spec)
    stitched = stitch(students)
    assert bits == dict(expected) and layer_bits(stitched) == layer_bits(reference)
    assert bits["conv1"].weight == 8 and bits["fc4"].weight == 8 and bits["conv2"].weight == 2  # pinned ends
    ours, theirs = quantized_layers(stitched), quantized_layers(reference)
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].layer_name == name
        assert ours[name].weight_quantizer.scale_mode == theirs[name].weight_quantizer.scale_mode
    assert ours["conv2"].weight_quantizer.scale_mode == "none"
    assert not quantized_layers(teacher)  # the teacher stays float
    # a quantizer given by name learns its output scale (sections must match feature magnitudes)
    named, _ = make_students(split(teacher, sections=2), Plan.uniform(2), "dorefa")
    assert {q.weight_quantizer.scale_mode for q in quantized_layers(stitch(named)).values()} == {"learned"}


def test_independent_sections_do_not_depend_on_training_order(setup) -> None:
    teacher, train, test = setup
    forward = dcq_quantize(teacher, train, plan=Plan.uniform(2), quantizer="twn", sections=3, config=config())
    backward = dcq_quantize(teacher, train, plan=Plan.uniform(2), quantizer="twn", sections=3, config=config(),
                   order=[2, 0, 1])
    assert _states_equal(forward.model, backward.model)
    assert _losses(forward) == _losses(backward)


def test_a_section_feature_loss_falls_under_training(setup) -> None:
    teacher, train, _ = setup
    sections = split(teacher, sections=3)
    students, _ = make_students(sections, Plan.uniform(1), "dorefa")
    features = TeacherFeatures(sections, train)
    cfg = config(train=TrainConfig(epochs=4, lr=0.02))
    before = section_loss(students[0], features, 0)
    result = train_section(SectionJob(0, students[0], features, cfg))
    after = section_loss(students[0], features, 0)
    losses = [r["loss"] for r in result.history]
    assert after < 0.8 * before, (before, after)
    assert losses[-1] < losses[0], losses


def test_feature_loss_is_measured_in_units_of_the_teacher_rms(setup) -> None:
    teacher, train, _ = setup
    sections = split(teacher, sections=2)
    features = TeacherFeatures(sections, train)
    targets = torch.cat([t.flatten() for _, t, _ in features.batches(0, 0)])
    assert feature_rms(features, 0) == pytest.approx(targets.double().pow(2).mean().sqrt().item(), rel=1e-9)
    runs = {}
    for norm in (True, False):
        students, _ = make_students(sections, Plan.uniform(2), "dorefa")
        cfg = config(feature_norm=norm, train=TrainConfig(epochs=1, lr=1e-9))  # lr ~0: the loss at the start
        runs[norm] = train_section(SectionJob(0, students[0], features, cfg))
    rms = runs[True].feature_rms
    assert runs[False].feature_rms is None
    assert runs[True].history[0]["loss"] == pytest.approx(runs[False].history[0]["loss"] / rms ** 2, rel=1e-4)


def test_cached_features_equal_on_the_fly_features(setup, tmp_path) -> None:
    teacher, train, _ = setup
    data_before = train.data.x.clone()
    sections = split(teacher, sections=3)
    live = TeacherFeatures(sections, train)
    cached = TeacherFeatures(sections, train, cache_dir=tmp_path / "cache")
    assert cached.cache_built and sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "boundary1.npy", "boundary2.npy", "boundary3.npy", "meta.json"]
    for index in range(3):
        for epoch in (0, 1):
            pairs = list(zip(live.batches(index, epoch), cached.batches(index, epoch), strict=True))
            assert len(pairs) == len(train)
            for a, b in pairs:
                assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not TeacherFeatures(sections, train, cache_dir=tmp_path / "cache").cache_built  # reused
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed.conv1.weight.mul_(1.5)
    assert TeacherFeatures(split(changed, sections=3), train, cache_dir=tmp_path / "cache").cache_built  # rebuilt
    assert torch.equal(train.data.x, data_before)  # float32 data is never normalised in place


def test_cache_needs_an_array_loader_without_augmentation(setup, tmp_path) -> None:
    teacher, train, _ = setup
    batches = list(train)
    with pytest.raises(ConfigError, match="ArrayLoader without augmentation"):
        TeacherFeatures(split(teacher, sections=2), batches, cache_dir=tmp_path / "c")


@pytest.mark.slow
def test_parallel_workers_match_one_process_bitwise(setup, tmp_path) -> None:
    teacher, train, test = setup
    kw = dict(plan=Plan.uniform(2), quantizer="dorefa", sections=3, eval_loader=test)
    single = dcq_quantize(teacher, train, config=config(), **kw)
    parallel = dcq_quantize(teacher, train, config=config(workers=2, feature_cache=str(tmp_path / "cache")), **kw)
    assert _states_equal(single.model, parallel.model)
    assert _losses(single) == _losses(parallel)
    assert single.accuracy == parallel.accuracy


def test_sequential_mode_trains_on_student_outputs(setup) -> None:
    teacher, train, _ = setup
    sections = split(teacher, sections=2)
    students, _ = make_students(sections, Plan.uniform(2), "wrpn")
    features = TeacherFeatures(sections, train)
    students[0].eval()
    train.set_epoch(0)  # the module's loader: other tests leave it at another epoch
    x, _ = next(iter(train))
    inp, target, _ = next(features.batches(1, 0, before=students[0]))
    with torch.no_grad():
        assert torch.equal(inp, students[0](x))
        assert not torch.equal(inp, sections[0](x))
    result = dcq_quantize(teacher, train, plan=Plan.uniform(2), quantizer="wrpn", sections=2,
                 config=config(mode="sequential", loss="smooth_l1"))
    assert all(s.history for s in result.sections)
    with pytest.raises(ConfigError, match="network order"):
        dcq_quantize(teacher, train, sections=2, config=config(mode="sequential"), order=[1, 0])
    with pytest.raises(ConfigError, match="independent"):
        config(mode="sequential", workers=2)


def test_last_section_logit_distillation(setup) -> None:
    teacher, train, _ = setup
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits, 4.0).abs().item() < 1e-6
    assert kd_loss(logits, -logits, 4.0).item() > 0
    result = dcq_quantize(teacher, train, plan=Plan.uniform(2), quantizer="lsq", sections=2,
                 config=config(kd_weight=0.5, kd_temperature=2.0, loss="l1"))
    last = result.sections[-1].history[-1]
    assert last["kd"] > 0 and last["loss"] == pytest.approx(last["ce"] + 0.5 * last["kd"], rel=1e-6)


def test_user_model_with_plain_batches_and_finetune() -> None:
    """The API on a model that is not in the zoo, cut by name, with a list of batches as loader."""
    torch.manual_seed(0)
    teacher = nn.Sequential()
    for name, module in [("stem", nn.Conv2d(3, 8, 3, padding=1)), ("act1", nn.ReLU()),
                         ("mid", nn.Conv2d(8, 8, 3, padding=1)), ("act2", nn.ReLU()),
                         ("pool", nn.AdaptiveAvgPool2d(2)), ("flat", nn.Flatten()), ("head", nn.Linear(32, 4))]:
        teacher.add_module(name, module)
    batches = [(torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))) for _ in range(4)]
    original = copy.deepcopy(teacher)
    result = dcq_quantize(teacher, batches, plan=Plan.uniform(3), quantizer="dorefa", split_at=["mid", "head"],
                 config=config(finetune=TrainConfig(epochs=2, lr=0.01)), eval_loader=batches)
    assert _states_equal(teacher, original)  # the teacher is not changed
    assert result.split_at == ["mid", "head"] and len(result.sections) == 3
    assert list(quantized_layers(result.model)) == ["stem", "mid", "head"]
    assert len(result.finetune_history) == 2 and result.finetune_history[0]["phase"] == "finetune"
    assert result.accuracy == evaluate(result.model, batches)[1]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'independent'"):
        DCQConfig(mode="independant")
    with pytest.raises(ConfigError, match="did you mean 'smooth_l1'"):
        DCQConfig(loss="smoothl1")
    with pytest.raises(ConfigError, match="workers"):
        DCQConfig(workers=0)
    with pytest.raises(ConfigError, match="split points"):
        dcq_quantize(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), [])
